"""Go documents from a tree-sitter tree.

Structs, interfaces and other named types are the ``classes``; methods attach to their receiver's
type (the receiver is the first param, as ``self`` is in Python); exports are the capitalised
top-level names, as Go defines them.
"""

from __future__ import annotations

from typing import Any

from tree_sitter import Node

from egemma.services.ast.ts_common import (
    NO_DEPENDENCIES,
    Dependencies,
    Document,
    class_record,
    doc_before,
    function_record,
    named,
    preorder,
    simple_name,
    text,
    type_text,
)

_TYPE_KINDS = {"struct_type": "struct", "interface_type": "interface"}


def _dependencies(node: Node) -> dict[str, list[Any]]:
    deps = Dependencies()
    for child in preorder(node):
        if child.type == "composite_literal":
            deps.instantiation(simple_name(child.child_by_field_name("type")))
        elif child.type == "call_expression":
            func = child.child_by_field_name("function")
            if func is not None and func.type == "selector_expression":
                field = func.child_by_field_name("field")
                deps.call(func.child_by_field_name("operand"), text(field))
    return deps.result()


def _params(node: Node | None) -> list[dict[str, str]]:
    if node is None:
        return []
    params: list[dict[str, str]] = []
    for decl in node.named_children:
        if decl.type not in ("parameter_declaration", "variadic_parameter_declaration"):
            continue
        type_value = type_text(decl.child_by_field_name("type"))
        if decl.type == "variadic_parameter_declaration":
            type_value = "..." + type_value
        names = [
            text(decl.child(i))
            for i in range(decl.child_count)
            if decl.field_name_for_child(i) == "name"
        ]
        for name in names or ["_"]:
            params.append({"name": name, "type": type_value})
    return params


def _function(node: Node, *, receiver: bool) -> dict[str, Any]:
    params = _params(node.child_by_field_name("receiver")) if receiver else []
    params += _params(node.child_by_field_name("parameters"))
    has_body = node.child_by_field_name("body") is not None
    return function_record(
        name=text(node.child_by_field_name("name")),
        docstring=doc_before(node),
        params=params,
        returns=type_text(node.child_by_field_name("result")),
        decorators=[],
        is_async=False,
        dependencies=_dependencies(node) if has_body else NO_DEPENDENCIES,
    )


def _receiver_type(node: Node) -> str:
    receiver = node.child_by_field_name("receiver")
    decls = named(receiver, "parameter_declaration") if receiver is not None else []
    if not decls:
        return ""
    raw = type_text(decls[0].child_by_field_name("type"))
    return raw.lstrip("*").split("[", 1)[0].strip()


def _type_spec(doc: Document, spec: Node, anchor: Node) -> None:
    name = text(spec.child_by_field_name("name"))
    type_node = spec.child_by_field_name("type")
    kind = _TYPE_KINDS.get(type_node.type if type_node is not None else "", "type")
    bases: list[str] = []
    methods: list[dict[str, Any]] = []
    if type_node is not None and kind == "struct":
        for fields in named(type_node, "field_declaration_list"):
            for field in named(fields, "field_declaration"):
                if field.child_by_field_name("name") is None:
                    bases.append(type_text(field.child_by_field_name("type")).lstrip("*"))
    elif type_node is not None and kind == "interface":
        for elem in type_node.named_children:
            if elem.type == "type_elem":
                bases.append(type_text(elem))
            elif elem.type in ("method_elem", "method_spec"):
                methods.append(_function(elem, receiver=False))
    docstring = doc_before(spec) or (doc_before(anchor) if len(named(anchor)) == 1 else "")
    record = class_record(
        name=name, kind=kind, docstring=docstring, base_classes=bases, decorators=[]
    )
    record["methods"] = methods
    doc.add_class(record)
    if name[:1].isupper():
        doc.add_export(name)


def _imports(doc: Document, declaration: Node) -> None:
    """``import str "strings"`` → module ``strings``, symbol ``str`` (``_`` and ``.`` bind none)."""
    for spec in preorder(declaration):
        if spec.type != "import_spec":
            continue
        path = text(spec.child_by_field_name("path")).strip('"`')
        alias = spec.child_by_field_name("name")
        symbol = text(alias) if alias is not None else path.rsplit("/", 1)[-1]
        doc.add_import(path, None if symbol in ("_", ".") else symbol)


def extract(root: Node, language: str) -> dict[str, Any]:
    doc = Document(language)
    pending_methods: list[tuple[str, dict[str, Any]]] = []
    for child in root.named_children:
        if child.type == "package_clause":
            doc.docstring = doc_before(child)
        elif child.type == "import_declaration":
            _imports(doc, child)
        elif child.type == "function_declaration":
            func = _function(child, receiver=False)
            doc.functions.append(func)
            if func["name"][:1].isupper():
                doc.add_export(func["name"])
        elif child.type == "method_declaration":
            pending_methods.append((_receiver_type(child), _function(child, receiver=True)))
        elif child.type == "type_declaration":
            for spec in named(child, "type_spec", "type_alias"):
                _type_spec(doc, spec, child)
    _attach_methods(doc, pending_methods)
    return doc.as_dict()


def _attach_methods(doc: Document, methods: list[tuple[str, dict[str, Any]]]) -> None:
    for owner, method in methods:
        record = doc.classes.get(owner)
        if record is None:  # receiver type declared in another file of the package
            record = doc.add_class(
                class_record(name=owner, kind="impl", docstring="", base_classes=[], decorators=[])
            )
        record["methods"].append(method)

"""Java documents from a tree-sitter tree.

Top-level classes, interfaces, enums and records are the ``classes`` (Java has no top-level
functions); annotations are the decorators; Javadoc (``/** */``) the docstrings; ``public`` types
the exports. ``import a.b.C`` → module ``a.b``, symbol ``C``.
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

_CLASS_KINDS = {
    "class_declaration": "class",
    "interface_declaration": "interface",
    "enum_declaration": "enum",
    "record_declaration": "record",
}
_METHODS = ("method_declaration", "constructor_declaration")
_ANNOTATIONS = ("marker_annotation", "annotation")


def _is_javadoc(raw: str) -> bool:
    return raw.startswith("/**")


def _doc(node: Node) -> str:
    return doc_before(node, is_doc=_is_javadoc)


def _modifiers(node: Node) -> Node | None:
    found = named(node, "modifiers")
    return found[0] if found else None


def _annotations(node: Node) -> list[str]:
    modifiers = _modifiers(node)
    if modifiers is None:
        return []
    return [simple_name(a.child_by_field_name("name")) for a in named(modifiers, *_ANNOTATIONS)]


def _dependencies(node: Node) -> dict[str, list[Any]]:
    deps = Dependencies()
    for child in preorder(node):
        if child.type == "object_creation_expression":
            deps.instantiation(type_text(child.child_by_field_name("type")))
        elif child.type == "method_invocation":
            obj = child.child_by_field_name("object")
            if obj is not None:
                deps.call(obj, text(child.child_by_field_name("name")))
    return deps.result()


def _params(node: Node) -> list[dict[str, str]]:
    params_node = node.child_by_field_name("parameters")
    params: list[dict[str, str]] = []
    for param in params_node.named_children if params_node is not None else []:
        if param.type == "formal_parameter":
            params.append(
                {
                    "name": text(param.child_by_field_name("name")),
                    "type": type_text(param.child_by_field_name("type")),
                }
            )
        elif param.type == "spread_parameter":
            types = [c for c in param.named_children if c.type not in ("modifiers",)]
            declarator = named(param, "variable_declarator")
            name = text(declarator[0].child_by_field_name("name")) if declarator else "_"
            params.append({"name": name, "type": type_text(types[0] if types else None) + "..."})
    return params


def _method(node: Node) -> dict[str, Any]:
    has_body = node.child_by_field_name("body") is not None
    return function_record(
        name=text(node.child_by_field_name("name")),
        docstring=_doc(node),
        params=_params(node),
        returns=type_text(node.child_by_field_name("type")),
        decorators=_annotations(node),
        is_async=False,
        dependencies=_dependencies(node) if has_body else NO_DEPENDENCIES,
    )


def _bases(node: Node) -> list[str]:
    bases: list[str] = []
    superclass = node.child_by_field_name("superclass")
    if superclass is not None:
        bases.extend(type_text(t) for t in superclass.named_children)
    for clause in named(node, "super_interfaces", "extends_interfaces"):
        for type_list in named(clause, "type_list"):
            bases.extend(type_text(t) for t in type_list.named_children)
    return bases


def _class(doc: Document, node: Node) -> None:
    name = text(node.child_by_field_name("name"))
    record = class_record(
        name=name,
        kind=_CLASS_KINDS[node.type],
        docstring=_doc(node),
        base_classes=_bases(node),
        decorators=_annotations(node),
    )
    body = node.child_by_field_name("body")
    members = list(body.named_children) if body is not None else []
    for decls in [m for m in members if m.type == "enum_body_declarations"]:
        members.extend(decls.named_children)
    record["methods"] = [_method(m) for m in members if m.type in _METHODS]
    doc.add_class(record)
    modifiers = _modifiers(node)
    if modifiers is not None and "public" in text(modifiers).split():
        doc.add_export(name)


def extract(root: Node, language: str) -> dict[str, Any]:
    doc = Document(language)
    for child in root.named_children:
        if child.type == "package_declaration":
            doc.docstring = _doc(child)
        elif child.type == "import_declaration":
            path = "".join(text(c) for c in child.named_children if c.type != "asterisk")
            if named(child, "asterisk"):
                doc.add_import(path, "*")
            elif "." in path:
                module, _, symbol = path.rpartition(".")
                doc.add_import(module, symbol)
            else:
                doc.add_import(path)
        elif child.type in _CLASS_KINDS:
            _class(doc, child)
    return doc.as_dict()

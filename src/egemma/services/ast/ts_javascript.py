"""JavaScript and TypeScript (incl. TSX) documents from a tree-sitter tree."""

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
    join_comments,
    leading_comments,
    named,
    preorder,
    simple_name,
    text,
    type_text,
)

_FUNCTION_TYPES = {"function_declaration", "generator_function_declaration"}
_FUNCTION_VALUES = {"arrow_function", "function_expression", "function", "generator_function"}
_CLASS_KINDS = {
    "class_declaration": "class",
    "abstract_class_declaration": "class",
    "class": "class",
    "interface_declaration": "interface",
}
_METHOD_TYPES = {"method_definition", "method_signature", "abstract_method_signature"}


def _string_value(node: Node | None) -> str:
    if node is None or node.type not in ("string", "template_string"):
        return ""
    return text(node)[1:-1]


def _dependencies(node: Node) -> dict[str, list[Any]]:
    deps = Dependencies()
    for child in preorder(node):
        if child.type == "new_expression":
            deps.instantiation(simple_name(child.child_by_field_name("constructor")))
        elif child.type == "call_expression":
            func = child.child_by_field_name("function")
            if func is not None and func.type == "member_expression":
                prop = func.child_by_field_name("property")
                deps.call(func.child_by_field_name("object"), text(prop))
    return deps.result()


def _param(node: Node) -> dict[str, str]:
    """One formal parameter: JS patterns and TS required/optional parameters."""
    type_node: Node | None = None
    default: Node | None = None
    pattern = node
    if node.type in ("required_parameter", "optional_parameter"):
        pattern = node.child_by_field_name("pattern") or node
        type_node = node.child_by_field_name("type")
        default = node.child_by_field_name("value")
    if pattern.type == "assignment_pattern":
        default = pattern.child_by_field_name("right")
        pattern = pattern.child_by_field_name("left") or pattern
    param = {
        "name": " ".join(text(pattern).split()),
        "type": type_text(type_node, strip_colon=True),
    }
    if default is not None:
        param["default"] = " ".join(text(default).split())
    return param


def _params(node: Node, *, with_defaults: bool) -> list[dict[str, str]]:
    params_node = node.child_by_field_name("parameters")
    if params_node is None:  # `x => x`
        single = node.child_by_field_name("parameter")
        return [] if single is None else [{"name": text(single), "type": "None"}]
    params = [_param(p) for p in params_node.named_children if "comment" not in p.type]
    if not with_defaults:
        for p in params:
            p.pop("default", None)
    return params


def _is_async(node: Node) -> bool:
    return any(c.type == "async" for c in node.children)


def _decorator_names(nodes: list[Node]) -> list[str]:
    names = []
    for deco in nodes:
        expr = deco.named_children[0] if deco.named_children else deco
        if expr.type == "call_expression":
            expr = expr.child_by_field_name("function") or expr
        names.append(simple_name(expr))
    return names


def _function(
    name: str, node: Node, anchor: Node, *, with_defaults: bool, decorators: list[str]
) -> dict[str, Any]:
    body = node.child_by_field_name("body")
    return function_record(
        name=name,
        docstring=doc_before(anchor, skip=("decorator",)),
        params=_params(node, with_defaults=with_defaults),
        returns=type_text(node.child_by_field_name("return_type"), strip_colon=True),
        decorators=decorators,
        is_async=_is_async(node),
        dependencies=_dependencies(node) if body is not None else NO_DEPENDENCIES,
    )


def _methods(body: Node) -> list[dict[str, Any]]:
    methods: list[dict[str, Any]] = []
    pending: list[Node] = []
    for member in body.named_children:
        if member.type == "decorator":
            pending.append(member)
            continue
        if member.type in _METHOD_TYPES:
            name = text(member.child_by_field_name("name"))
            decorators = _decorator_names(pending)
            methods.append(
                _function(name, member, member, with_defaults=False, decorators=decorators)
            )
        if "comment" not in member.type:
            pending = []
    return methods


def _bases(node: Node) -> list[str]:
    bases: list[str] = []
    for clause in named(node, "class_heritage", "extends_type_clause"):
        targets = clause.named_children if clause.type == "class_heritage" else [clause]
        for part in targets:
            if part.type in ("extends_clause", "implements_clause", "extends_type_clause"):
                bases.extend(simple_name(t) for t in part.named_children)
            else:  # plain JS: `class A extends B`
                bases.append(simple_name(part))
    return bases


def _class(doc: Document, node: Node, anchor: Node, decorators: list[Node]) -> str:
    name = text(node.child_by_field_name("name")) or "default"
    record = class_record(
        name=name,
        kind=_CLASS_KINDS[node.type],
        docstring=doc_before(anchor, skip=("decorator",)),
        base_classes=_bases(node),
        decorators=_decorator_names(decorators + named(node, "decorator")),
    )
    body = node.child_by_field_name("body")
    if body is not None:
        record["methods"] = _methods(body)
    doc.add_class(record)
    return name


def _declaration(doc: Document, node: Node, anchor: Node, decorators: list[Node]) -> list[str]:
    """Functions and classes declared by one top-level statement; returns the names declared."""
    if node.type in _FUNCTION_TYPES:
        name = text(node.child_by_field_name("name"))
        doc.functions.append(_function(name, node, anchor, with_defaults=True, decorators=[]))
        return [name]
    if node.type in _CLASS_KINDS:
        return [_class(doc, node, anchor, decorators)]
    names: list[str] = []
    if node.type in ("lexical_declaration", "variable_declaration"):
        for declarator in named(node, "variable_declarator"):
            name = text(declarator.child_by_field_name("name"))
            value = declarator.child_by_field_name("value")
            names.append(name)
            if value is not None and value.type in _FUNCTION_VALUES:
                func = _function(name, value, anchor, with_defaults=True, decorators=[])
                doc.functions.append(func)
    elif node.type in ("type_alias_declaration", "enum_declaration"):
        names.append(text(node.child_by_field_name("name")))
    return names


def _export(doc: Document, node: Node) -> None:
    declaration = node.child_by_field_name("declaration")
    decorators = named(node, "decorator")
    if declaration is not None:
        for name in _declaration(doc, declaration, node, decorators):
            doc.add_export(name)
    for clause in named(node, "export_clause"):
        for spec in named(clause, "export_specifier"):
            alias = spec.child_by_field_name("alias") or spec.child_by_field_name("name")
            doc.add_export(text(alias))
    if declaration is None and any(c.type == "default" for c in node.children):
        value = node.child_by_field_name("value")
        if value is not None and value.type in _FUNCTION_VALUES | {"class"}:
            _declaration(doc, value, node, decorators)
        doc.add_export("default")


def _import_statement(doc: Document, node: Node) -> None:
    module = _string_value(node.child_by_field_name("source"))
    doc.add_import(module)
    for clause in named(node, "import_clause"):
        for part in clause.named_children:
            if part.type == "identifier":
                doc.add_import(module, text(part))
            elif part.type == "namespace_import":
                for ident in named(part, "identifier"):
                    doc.add_import(module, text(ident))
            elif part.type == "named_imports":
                for spec in named(part, "import_specifier"):
                    alias = spec.child_by_field_name("alias") or spec.child_by_field_name("name")
                    doc.add_import(module, text(alias))


def _require(doc: Document, call: Node) -> None:
    """``require('m')`` / ``import('m')`` anywhere; the bound names when assigned."""
    func = call.child_by_field_name("function")
    if func is None or text(func) not in ("require", "import"):
        return
    args = call.child_by_field_name("arguments")
    module = _string_value(args.named_children[0]) if args and args.named_children else ""
    if not module:
        return
    doc.add_import(module)
    parent = call.parent
    target = parent.child_by_field_name("name") if parent is not None else None
    if parent is None or parent.type != "variable_declarator" or target is None:
        return
    if target.type == "identifier":
        doc.add_import(module, text(target))
    elif target.type == "object_pattern":
        for prop in target.named_children:
            value = prop.child_by_field_name("value") if prop.type == "pair_pattern" else prop
            doc.add_import(module, text(value))


def _commonjs_export(doc: Document, node: Node) -> None:
    """``module.exports = {a, b}`` / ``module.exports.x =`` / ``exports.x =``."""
    left = node.child_by_field_name("left")
    right = node.child_by_field_name("right")
    target = text(left)
    if target == "module.exports" and right is not None:
        if right.type == "object":
            for prop in right.named_children:
                key = prop.child_by_field_name("key") if prop.type == "pair" else prop
                doc.add_export(text(key))
        elif right.type == "identifier":
            doc.add_export(text(right))
    elif target.startswith(("module.exports.", "exports.")):
        doc.add_export(target.rsplit(".", 1)[1])


def extract(root: Node, language: str) -> dict[str, Any]:
    doc = Document(language)
    comments, first = leading_comments(root)
    if comments and (first is root or first.start_point.row > comments[-1].end_point.row + 1):
        doc.docstring = join_comments(comments)
    for child in root.named_children:
        if child.type == "export_statement":
            _export(doc, child)
        elif child.type == "import_statement":
            _import_statement(doc, child)
        else:
            _declaration(doc, child, child, [])
    for node in preorder(root):
        if node.type == "call_expression":
            _require(doc, node)
        elif (
            node.type == "assignment_expression"
            and node.parent is not None
            and node.parent.type == "expression_statement"
            and node.parent.parent == root
        ):
            _commonjs_export(doc, node)
    for child in root.named_children:
        if child.type == "export_statement":
            doc.add_import(_string_value(child.child_by_field_name("source")))
    return doc.as_dict()

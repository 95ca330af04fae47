"""Rust documents from a tree-sitter tree.

Structs, enums, unions and traits are the ``classes``; ``impl`` blocks add their methods (and the
implemented trait as a base) to the type; ``#[...]`` attributes are the decorators; ``///`` and
``//!`` comments the docstrings; ``pub`` items the exports.
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
    join_comments,
    leading_comments,
    named,
    preorder,
    simple_name,
    text,
    type_text,
)

_CLASS_KINDS = {
    "struct_item": "struct",
    "enum_item": "enum",
    "union_item": "union",
    "trait_item": "trait",
}
_FUNCTIONS = ("function_item", "function_signature_item")


def _is_outer_doc(raw: str) -> bool:
    return (raw.startswith("///") and not raw.startswith("////")) or raw.startswith("/**")


def _is_inner_doc(raw: str) -> bool:
    return raw.startswith(("//!", "/*!"))


def _doc(node: Node) -> str:
    return doc_before(node, is_doc=_is_outer_doc, skip=("attribute_item",))


def _attributes(node: Node) -> list[str]:
    """``#[...]`` items directly above ``node`` (comments may sit between), in source order."""
    found: list[str] = []
    sibling = node.prev_named_sibling
    while sibling is not None and (sibling.type == "attribute_item" or "comment" in sibling.type):
        if sibling.type == "attribute_item":
            found.extend(" ".join(text(a).split()) for a in named(sibling, "attribute"))
        sibling = sibling.prev_named_sibling
    return list(reversed(found))


def _dependencies(node: Node) -> dict[str, list[Any]]:
    deps = Dependencies()
    for child in preorder(node):
        if child.type == "struct_expression":
            deps.instantiation(simple_name(child.child_by_field_name("name")))
        elif child.type == "call_expression":
            func = child.child_by_field_name("function")
            if func is None:
                continue
            if func.type == "field_expression":
                deps.call(
                    func.child_by_field_name("value"), text(func.child_by_field_name("field"))
                )
            elif func.type == "scoped_identifier":
                deps.call(func.child_by_field_name("path"), text(func.child_by_field_name("name")))
            elif func.type == "identifier" and text(func)[:1].isupper():
                deps.instantiation(text(func))
    return deps.result()


def _params(node: Node) -> list[dict[str, str]]:
    params_node = node.child_by_field_name("parameters")
    params: list[dict[str, str]] = []
    for param in params_node.named_children if params_node is not None else []:
        if param.type == "self_parameter":
            params.append({"name": "self", "type": " ".join(text(param).split())})
        elif param.type == "parameter":
            pattern = param.child_by_field_name("pattern")
            params.append(
                {"name": text(pattern), "type": type_text(param.child_by_field_name("type"))}
            )
    return params


def _function(node: Node) -> dict[str, Any]:
    modifiers = named(node, "function_modifiers")
    has_body = node.child_by_field_name("body") is not None
    return function_record(
        name=text(node.child_by_field_name("name")),
        docstring=_doc(node),
        params=_params(node),
        returns=type_text(node.child_by_field_name("return_type")),
        decorators=_attributes(node),
        is_async=any("async" in text(m).split() for m in modifiers),
        dependencies=_dependencies(node) if has_body else NO_DEPENDENCIES,
    )


def _is_pub(node: Node) -> bool:
    return bool(named(node, "visibility_modifier"))


def _type_name(node: Node | None) -> str:
    if node is not None and node.type == "generic_type":
        node = node.child_by_field_name("type")
    return simple_name(node)


def _class(doc: Document, node: Node) -> None:
    bases = []
    bounds = node.child_by_field_name("bounds")
    if bounds is not None:
        bases = [" ".join(text(b).split()) for b in bounds.named_children]
    record = class_record(
        name=text(node.child_by_field_name("name")),
        kind=_CLASS_KINDS[node.type],
        docstring=_doc(node),
        base_classes=bases,
        decorators=_attributes(node),
    )
    body = node.child_by_field_name("body")
    if node.type == "trait_item" and body is not None:
        record["methods"] = [_function(f) for f in named(body, *_FUNCTIONS)]
    doc.add_class(record)


def _impl(doc: Document, node: Node) -> None:
    name = _type_name(node.child_by_field_name("type"))
    record = doc.classes.get(name) or doc.add_class(
        class_record(name=name, kind="impl", docstring="", base_classes=[], decorators=[])
    )
    trait = node.child_by_field_name("trait")
    if trait is not None and _type_name(trait) not in record["base_classes"]:
        record["base_classes"].append(_type_name(trait))
    body = node.child_by_field_name("body")
    if body is not None:
        record["methods"].extend(_function(f) for f in named(body, *_FUNCTIONS))


def _use(doc: Document, node: Node, prefix: str) -> None:
    """One ``use`` tree: ``a::b::C`` → module ``a::b``, symbol ``C``; lists and globs recurse."""
    stack = [(node, prefix)]
    while stack:
        current, base = stack.pop()
        kind = current.type
        if kind == "scoped_use_list":
            list_path = current.child_by_field_name("path")
            inner = f"{base}{text(list_path)}::" if list_path is not None else base
            stack.extend((c, inner) for c in named(current.child_by_field_name("list") or current))
        elif kind == "use_list":
            stack.extend((c, base) for c in current.named_children)
        elif kind == "use_wildcard":
            path = "".join(text(c) for c in current.named_children)
            module = (base + path).rstrip(":")
            doc.add_import(module, "*")
        elif kind == "use_as_clause":
            full = base + text(current.child_by_field_name("path"))
            module = full.rsplit("::", 1)[0] if "::" in full else full
            doc.add_import(module, text(current.child_by_field_name("alias")))
        elif kind == "self":
            module = base.rstrip(":")
            parent, _, last = module.rpartition("::")
            doc.add_import(parent or module, last)
        elif "comment" not in kind:
            full = base + text(current)
            if "::" in full:
                module, _, symbol = full.rpartition("::")
                doc.add_import(module, symbol)
            else:
                doc.add_import(full)


def extract(root: Node, language: str) -> dict[str, Any]:
    doc = Document(language)
    comments, _ = leading_comments(root, is_doc=_is_inner_doc)
    doc.docstring = join_comments(comments)
    for child in root.named_children:
        if child.type in _FUNCTIONS:
            doc.functions.append(_function(child))
        elif child.type in _CLASS_KINDS:
            _class(doc, child)
        elif child.type == "impl_item":
            _impl(doc, child)
        elif child.type == "extern_crate_declaration":
            doc.add_import(text(child.child_by_field_name("name")))
        if _is_pub(child) and child.child_by_field_name("name") is not None:
            doc.add_export(text(child.child_by_field_name("name")))
    for node in preorder(root):
        if node.type == "use_declaration":
            argument = node.child_by_field_name("argument")
            if argument is not None:
                _use(doc, argument, "")
    return doc.as_dict()

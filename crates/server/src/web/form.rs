//! Forms generated from request schemas: one labelled, typed input per field of a request message.
//!
//! Inputs are named after the request's fields (`name`; nested fields as `options.surname`). Their kinds follow
//! the field types: number inputs for integers (64-bit ones are sent as JSON strings, as proto JSON does) and
//! floats, checkboxes for bools, selects for enums, a text input for bytes (base64), strings and the well-known
//! types that proto JSON writes as strings (Timestamp, Duration, FieldMask), and a JSON text area for the others
//! (Struct, Value, Any…). Nested messages are fieldsets; repeated fields and maps are lists of rows with an "Add"
//! button, each row from a `<template>`. The page's script reads a form back into JSON by walking this structure:
//! a `.fields` element holds `.field` elements, each with `data-field` (the JSON name), `data-kind`, and for
//! lists and maps an `.items` element of `.item` rows.

use super::html::{attr, esc};
use micro_core::schema::{field_comment, kind_name, type_name};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use std::fmt::Write;

/// How deep nested messages are expanded into fieldsets; deeper ones (and recursive types) are JSON text areas.
const MAX_DEPTH: usize = 4;

/// The inputs of every field of `message`, for the form with id prefix `form` (unique in the page).
pub(crate) fn fields(message: &MessageDescriptor, form: &str) -> String {
    let mut out = String::new();
    let mut seen = vec![message.full_name().to_string()];
    message_fields(&mut out, message, form, "", &mut seen);
    out
}

fn message_fields(out: &mut String, message: &MessageDescriptor, form: &str, prefix: &str, seen: &mut Vec<String>) {
    out.push_str("<div class=\"fields\">");
    if message.fields().len() == 0 {
        out.push_str("<p class=\"hint\">This request has no fields.</p>");
    }
    for field in message.fields() {
        field_input(out, &field, form, prefix, seen);
    }
    out.push_str("</div>");
}

/// The kind a field's value is read as by the page's script.
fn value_kind(kind: &Kind, seen: &[String]) -> &'static str {
    match kind {
        Kind::Bool => "bool",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => "int",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => "int64",
        Kind::Float | Kind::Double => "float",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Enum(_) => "enum",
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => "string",
            "google.protobuf.StringValue" => "string",
            "google.protobuf.BytesValue" => "bytes",
            "google.protobuf.BoolValue" => "bool",
            "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => "int",
            "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => "int64",
            "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => "float",
            name if name.starts_with("google.protobuf.") => "json",
            _ if seen.len() >= MAX_DEPTH || seen.iter().any(|s| s == m.full_name()) => "json",
            _ => "message",
        },
    }
}

/// A placeholder that shows the expected text of kinds written as strings.
fn placeholder(kind: &Kind) -> &'static str {
    match kind {
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => "2026-01-02T15:04:05Z",
            "google.protobuf.Duration" => "1.5s",
            "google.protobuf.FieldMask" => "a,b.c",
            "google.protobuf.Empty" => "{}",
            _ => "JSON",
        },
        Kind::Bytes => "base64",
        _ => "",
    }
}

/// An id made of the safe characters of `parts`.
fn id(parts: &[&str]) -> String {
    let mut out = String::from("f");
    for part in parts {
        out.push('-');
        out.extend(part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }));
    }
    out
}

fn field_input(out: &mut String, field: &FieldDescriptor, form: &str, prefix: &str, seen: &mut Vec<String>) {
    let path = format!("{prefix}{}", field.name());
    let json_name = field.json_name();
    let input_id = id(&[form, &path]);
    let help = field_comment(field).map(|c| format!("<small id=\"{input_id}-help\">{}</small>", esc(&c)));
    let described = if help.is_some() { format!(" aria-describedby=\"{input_id}-help\"") } else { String::new() };
    let type_label = format!("<span class=\"type\">{}</span>", esc(&type_name(field)));
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return };
        let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let value_kind_name = value_kind(&value.kind(), seen);
        let _ = write!(
            out,
            "<fieldset class=\"field map\" data-field=\"{json}\" data-kind=\"map\" data-key=\"{key_kind}\">\
             <legend>{name} {type_label}</legend>{help}<div class=\"items\"></div><template>\
             <div class=\"item\"><label>key <input class=\"key\" name=\"{path}.key\" data-kind=\"{key_kind}\"{key_type}></label>",
            json = attr(json_name),
            key_kind = value_kind(&key.kind(), seen),
            key_type = input_type(&key.kind()),
            name = esc(field.name()),
            path = attr(&path),
            help = help.clone().unwrap_or_default(),
        );
        item_value(out, &value, value_kind_name, form, &format!("{path}.value"), seen);
        let _ = write!(
            out,
            "<button type=\"button\" class=\"remove\" aria-label=\"Remove this entry of {name}\">✕</button></div>\
             </template><button type=\"button\" class=\"add\">Add entry</button></fieldset>",
            name = attr(field.name())
        );
        return;
    }
    let kind = field.kind();
    let vk = value_kind(&kind, seen);
    if field.is_list() {
        let _ = write!(
            out,
            "<fieldset class=\"field list\" data-field=\"{json}\" data-kind=\"list\">\
             <legend>{name} {type_label}</legend>{help}<div class=\"items\"></div><template><div class=\"item\">",
            json = attr(json_name),
            name = esc(field.name()),
            help = help.unwrap_or_default(),
        );
        item_value(out, field, vk, form, &path, seen);
        let _ = write!(
            out,
            "<button type=\"button\" class=\"remove\" aria-label=\"Remove this item of {name}\">✕</button></div>\
             </template><button type=\"button\" class=\"add\">Add item</button></fieldset>",
            name = attr(field.name())
        );
        return;
    }
    if vk == "message" {
        let Kind::Message(m) = &kind else { return };
        let _ = write!(
            out,
            "<fieldset class=\"field message\" data-field=\"{json}\" data-kind=\"message\"><legend>{name} {type_label}</legend>{help}",
            json = attr(json_name),
            name = esc(field.name()),
            help = help.unwrap_or_default(),
        );
        seen.push(m.full_name().to_string());
        message_fields(out, m, form, &format!("{path}."), seen);
        seen.pop();
        out.push_str("</fieldset>");
        return;
    }
    let _ = write!(out, "<div class=\"field\" data-field=\"{}\" data-kind=\"{vk}\">", attr(json_name));
    if vk == "bool" {
        let _ = write!(
            out,
            "<label class=\"check\"><input type=\"checkbox\" id=\"{input_id}\" name=\"{path}\"{described}> {name} \
             {type_label}</label>",
            path = attr(&path),
            name = esc(field.name()),
        );
    } else {
        let _ = write!(out, "<label for=\"{input_id}\">{name} {type_label}</label>", name = esc(field.name()));
        scalar_control(out, &kind, vk, &input_id, &path, &described);
    }
    if let Some(help) = help {
        out.push_str(&help);
    }
    out.push_str("</div>");
}

/// The value part of a list item or map entry: a control, or the fields of a message.
fn item_value(out: &mut String, field: &FieldDescriptor, vk: &str, form: &str, path: &str, seen: &mut Vec<String>) {
    let kind = field.kind();
    if vk == "message" {
        let Kind::Message(m) = &kind else { return };
        out.push_str("<div class=\"value\" data-kind=\"message\">");
        seen.push(m.full_name().to_string());
        message_fields(out, m, form, &format!("{path}."), seen);
        seen.pop();
        out.push_str("</div>");
        return;
    }
    let label = format!("{} value", kind_name(&kind));
    let _ = write!(out, "<label class=\"value\" data-kind=\"{vk}\"><span class=\"sr\">{}</span>", esc(&label));
    if vk == "bool" {
        let _ = write!(out, "<input type=\"checkbox\" name=\"{}\">", attr(path));
    } else {
        scalar_control(out, &kind, vk, "", path, "");
    }
    out.push_str("</label>");
}

/// The `type` (and `step`) attributes of a number input, else nothing.
fn input_type(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => " type=\"number\" step=\"1\"",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => " type=\"number\" step=\"1\"",
        Kind::Float | Kind::Double => " type=\"number\" step=\"any\"",
        _ => "",
    }
}

/// An input, select or text area for one scalar value.
fn scalar_control(out: &mut String, kind: &Kind, vk: &str, input_id: &str, path: &str, described: &str) {
    let id_attr = if input_id.is_empty() { String::new() } else { format!(" id=\"{input_id}\"") };
    let path = attr(path);
    match (kind, vk) {
        (Kind::Enum(e), _) => {
            let _ = write!(out, "<select{id_attr} name=\"{path}\"{described}>");
            for value in e.values() {
                let _ = write!(out, "<option value=\"{0}\">{0}</option>", attr(value.name()));
            }
            out.push_str("</select>");
        }
        (_, "json") => {
            let _ = write!(
                out,
                "<textarea{id_attr} name=\"{path}\" rows=\"2\" spellcheck=\"false\" placeholder=\"{}\"{described}></textarea>",
                placeholder(kind)
            );
        }
        _ => {
            let number = match vk {
                "int" | "int64" => " type=\"number\" step=\"1\" inputmode=\"numeric\"",
                "float" => " type=\"number\" step=\"any\" inputmode=\"decimal\"",
                _ => "",
            };
            let ph = placeholder(kind);
            let ph = if ph.is_empty() { String::new() } else { format!(" placeholder=\"{ph}\"") };
            let _ = write!(out, "<input{id_attr} name=\"{path}\"{number}{ph}{described} autocomplete=\"off\">");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> MessageDescriptor {
        let schema = micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        schema.pool.get_message_by_name(name).unwrap()
    }

    #[test]
    fn nested_fields_are_named_by_their_path_and_typed() {
        // runtime.CreateRequest: a nested Service with a map of metadata, and options with repeated strings.
        let html = fields(&message("runtime.CreateRequest"), "create");
        assert!(html.contains("name=\"service.name\""), "{html}");
        assert!(html.contains("data-field=\"metadata\" data-kind=\"map\""), "{html}");
        assert!(html.contains("data-field=\"command\" data-kind=\"list\""), "{html}");
        assert!(html.contains("name=\"service.status\" type=\"number\" step=\"1\""), "{html}");
    }

    #[test]
    fn enums_are_selects_and_bools_checkboxes() {
        let html = fields(&message("auth.Rule"), "rule");
        assert!(html.contains("<select id=\"f-rule-access\" name=\"access\""), "{html}");
        assert!(html.contains("<option value=\"GRANTED\">GRANTED</option>"));
        let html = fields(&message("config.GetRequest"), "get");
        assert!(html.contains("type=\"checkbox\" id=\"f-get-options-secret\" name=\"options.secret\""), "{html}");
    }

    #[test]
    fn comments_describe_their_inputs() {
        let html = fields(&message("auth.TokenRequest"), "t");
        assert!(html.contains("aria-describedby=\"f-t-id-help\""), "{html}");
        assert!(html.contains("<small id=\"f-t-id-help\">Account id or name (with `secret`).</small>"), "{html}");
    }
}

//! Schema elements printed in proto syntax, as `grpcurl describe` prints them, or as their descriptor in JSON.
//!
//! The layout follows grpcurl's printer: leading comments kept (trailing and detached ones dropped), two-space
//! indents, type names fully qualified with a leading dot, methods sorted by name, fields by number with each
//! `oneof` where its first field goes, then nested messages, enums, extensions, extension ranges and reserved
//! numbers and names. Options are printed as they were set (`[deprecated = true]`, `option deprecated = true;`),
//! custom options by their extension's name in parentheses.

use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, FileDescriptor,
    Kind, MessageDescriptor, MethodDescriptor, OneofDescriptor, ReflectMessage, ServiceDescriptor, Value,
};
use std::fmt::Write;

/// The highest field number: a range that ends here is printed `N to max`.
const MAX_FIELD_NUMBER: u32 = 536_870_911;

/// One element of a schema that can be described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbol {
    /// A gRPC service.
    Service(ServiceDescriptor),
    /// A method of a gRPC service.
    Method(MethodDescriptor),
    /// A message type.
    Message(MessageDescriptor),
    /// An enum type.
    Enum(EnumDescriptor),
}

impl Symbol {
    /// The fully-qualified name, e.g. `helloworld.Helloworld.Call`.
    pub fn full_name(&self) -> &str {
        match self {
            Symbol::Service(s) => s.full_name(),
            Symbol::Method(m) => m.full_name(),
            Symbol::Message(m) => m.full_name(),
            Symbol::Enum(e) => e.full_name(),
        }
    }

    /// What it is, with its article: `a service`, `a method`, `a message`, `an enum`.
    pub fn what(&self) -> &'static str {
        match self {
            Symbol::Service(_) => "a service",
            Symbol::Method(_) => "a method",
            Symbol::Message(_) => "a message",
            Symbol::Enum(_) => "an enum",
        }
    }

    /// The element in proto syntax, with its leading comment, ending in a newline.
    pub fn to_proto(&self) -> String {
        let mut out = Out::default();
        match self {
            Symbol::Service(s) => service(&mut out, s),
            Symbol::Method(m) => method(&mut out, m),
            Symbol::Message(m) => message(&mut out, m),
            Symbol::Enum(e) => enumeration(&mut out, e),
        }
        out.text
    }

    /// What `grpcurl describe` prints: `<full name> is a service:` and the element in proto syntax.
    pub fn describe(&self) -> String {
        format!("{} is {}:\n{}", self.full_name(), self.what(), self.to_proto())
    }

    /// The element's descriptor (`ServiceDescriptorProto`, `MethodDescriptorProto`, `DescriptorProto` or
    /// `EnumDescriptorProto`) as JSON, with proto field names and only the fields that are set.
    pub fn to_json(&self) -> serde_json::Value {
        let message = match self {
            Symbol::Service(s) => s.service_descriptor_proto().transcode_to_dynamic(),
            Symbol::Method(m) => m.method_descriptor_proto().transcode_to_dynamic(),
            Symbol::Message(m) => m.descriptor_proto().transcode_to_dynamic(),
            Symbol::Enum(e) => e.enum_descriptor_proto().transcode_to_dynamic(),
        };
        let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap_or_else(|e| serde_json::Value::String(format!("<unprintable descriptor: {e}>")))
    }
}

/// Finds a service, method, message or enum by its fully-qualified name (a leading dot is allowed).
pub fn find_symbol(pool: &DescriptorPool, full_name: &str) -> Option<Symbol> {
    let name = full_name.strip_prefix('.').unwrap_or(full_name);
    if let Some(s) = pool.get_service_by_name(name) {
        return Some(Symbol::Service(s));
    }
    if let Some(m) = pool.get_message_by_name(name) {
        return Some(Symbol::Message(m));
    }
    if let Some(e) = pool.get_enum_by_name(name) {
        return Some(Symbol::Enum(e));
    }
    let (service, method) = name.rsplit_once('.')?;
    pool.get_service_by_name(service)?.methods().find(|m| m.name() == method).map(Symbol::Method)
}

/// Text being printed, with the current indent.
#[derive(Default)]
struct Out {
    text: String,
    indent: usize,
}

impl Out {
    fn line(&mut self, line: impl AsRef<str>) {
        for _ in 0..self.indent {
            self.text.push_str("  ");
        }
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    /// The leading comment of the element at `path` in `file`, one `//` line per line of it.
    fn comment(&mut self, file: &FileDescriptor, path: &[i32]) {
        let Some(info) = file.file_descriptor_proto().source_code_info.as_ref() else { return };
        let Some(text) = info.location.iter().find(|l| l.path == path).and_then(|l| l.leading_comments.as_deref())
        else {
            return;
        };
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            let line = line.trim_end();
            // A line of a block comment comes without the space that follows `//` in a line comment.
            let space = if line.is_empty() || line.starts_with([' ', '\t']) { "" } else { " " };
            self.line(format!("//{space}{line}"));
        }
    }

    /// `option NAME = VALUE;` for every option set in `options`.
    fn options(&mut self, options: &DynamicMessage) {
        for (name, value) in option_list(options) {
            self.line(format!("option {name} = {value};"));
        }
    }
}

fn service(out: &mut Out, service: &ServiceDescriptor) {
    out.comment(&service.parent_file(), service.path());
    out.line(format!("service {} {{", service.name()));
    out.indent += 1;
    out.options(&service.options());
    let mut methods: Vec<MethodDescriptor> = service.methods().collect();
    methods.sort_by(|a, b| a.name().cmp(b.name()));
    for m in &methods {
        method(out, m);
    }
    out.indent -= 1;
    out.line("}");
}

fn method(out: &mut Out, method: &MethodDescriptor) {
    out.comment(&method.parent_file(), method.path());
    let stream = |yes: bool| if yes { "stream " } else { "" };
    let signature = format!(
        "rpc {} ( {}.{} ) returns ( {}.{} )",
        method.name(),
        stream(method.is_client_streaming()),
        method.input().full_name(),
        stream(method.is_server_streaming()),
        method.output().full_name()
    );
    let options = option_list(&method.options());
    if options.is_empty() {
        out.line(format!("{signature};"));
        return;
    }
    out.line(format!("{signature} {{"));
    out.indent += 1;
    for (name, value) in options {
        out.line(format!("option {name} = {value};"));
    }
    out.indent -= 1;
    out.line("}");
}

fn message(out: &mut Out, message: &MessageDescriptor) {
    out.comment(&message.parent_file(), message.path());
    out.line(format!("message {} {{", message.name()));
    out.indent += 1;
    message_body(out, message);
    out.indent -= 1;
    out.line("}");
}

/// What is inside a message's braces (also a group's).
fn message_body(out: &mut Out, message: &MessageDescriptor) {
    out.options(&message.options());

    // Fields by number; a (non-synthetic) oneof where its first field goes.
    let mut fields: Vec<FieldDescriptor> = message.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    let mut printed_oneofs: Vec<String> = Vec::new();
    for field in &fields {
        match field.containing_oneof().filter(|o| !o.is_synthetic()) {
            Some(oneof) => {
                if printed_oneofs.iter().any(|n| n == oneof.name()) {
                    continue;
                }
                printed_oneofs.push(oneof.name().to_string());
                oneof_block(out, &oneof);
            }
            None => field_line(out, field),
        }
    }

    // Nested types, but not the entries of map fields nor the types of groups, which are printed in place.
    let groups: Vec<String> = fields
        .iter()
        .filter(|f| f.is_group())
        .filter_map(|f| match f.kind() {
            Kind::Message(m) => Some(m.full_name().to_string()),
            _ => None,
        })
        .collect();
    let mut nested: Vec<MessageDescriptor> =
        message.child_messages().filter(|m| !m.is_map_entry() && !groups.iter().any(|g| g == m.full_name())).collect();
    nested.sort_by(|a, b| a.name().cmp(b.name()));
    for m in &nested {
        self::message(out, m);
    }
    let mut enums: Vec<EnumDescriptor> = message.child_enums().collect();
    enums.sort_by(|a, b| a.name().cmp(b.name()));
    for e in &enums {
        enumeration(out, e);
    }
    extensions(out, message.child_extensions().collect());

    let ranges: Vec<String> = message.extension_ranges().map(|r| range(r.start, r.end - 1)).collect();
    if !ranges.is_empty() {
        out.line(format!("extensions {};", ranges.join(", ")));
    }
    let reserved: Vec<String> = message.reserved_ranges().map(|r| range(r.start, r.end - 1)).collect();
    if !reserved.is_empty() {
        out.line(format!("reserved {};", reserved.join(", ")));
    }
    let names: Vec<String> = message.reserved_names().map(quote).collect();
    if !names.is_empty() {
        out.line(format!("reserved {};", names.join(", ")));
    }
}

/// `N`, or `N to M`, or `N to max`.
fn range(start: u32, last: u32) -> String {
    if start == last {
        start.to_string()
    } else if last >= MAX_FIELD_NUMBER {
        format!("{start} to max")
    } else {
        format!("{start} to {last}")
    }
}

fn oneof_block(out: &mut Out, oneof: &OneofDescriptor) {
    out.comment(&oneof.parent_message().parent_file(), oneof.path());
    out.line(format!("oneof {} {{", oneof.name()));
    out.indent += 1;
    out.options(&oneof.options());
    let mut fields: Vec<FieldDescriptor> = oneof.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    for field in &fields {
        field_line(out, field);
    }
    out.indent -= 1;
    out.line("}");
}

/// `extend .Foo { … }` blocks, one per extended message, for extensions declared in one scope.
fn extensions(out: &mut Out, mut extensions: Vec<ExtensionDescriptor>) {
    extensions.sort_by(|a, b| {
        (a.containing_message().full_name(), a.number()).cmp(&(b.containing_message().full_name(), b.number()))
    });
    let mut i = 0;
    while i < extensions.len() {
        let extendee = extensions[i].containing_message();
        out.line(format!("extend .{} {{", extendee.full_name()));
        out.indent += 1;
        while i < extensions.len() && extensions[i].containing_message() == extendee {
            extension_line(out, &extensions[i]);
            i += 1;
        }
        out.indent -= 1;
        out.line("}");
    }
}

/// The syntax rules a field's file follows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Proto2,
    Proto3,
    Editions,
}

fn syntax(file: &FileDescriptor) -> Syntax {
    match file.file_descriptor_proto().syntax.as_deref() {
        Some("proto3") => Syntax::Proto3,
        Some("editions") => Syntax::Editions,
        _ => Syntax::Proto2,
    }
}

/// A field's label as written: `repeated `, `optional `, `required ` or nothing.
fn label(syntax: Syntax, cardinality: Cardinality, is_map: bool, proto3_optional: bool) -> &'static str {
    match (cardinality, syntax) {
        _ if is_map => "",
        (Cardinality::Repeated, _) => "repeated ",
        (Cardinality::Required, _) => "required ",
        (Cardinality::Optional, Syntax::Proto2) => "optional ",
        (Cardinality::Optional, Syntax::Proto3) if proto3_optional => "optional ",
        _ => "",
    }
}

fn field_line(out: &mut Out, field: &FieldDescriptor) {
    let file = field.parent_file();
    out.comment(&file, field.path());
    let proto = field.field_descriptor_proto();
    let in_oneof = field.containing_oneof().is_some_and(|o| !o.is_synthetic());
    let label =
        if in_oneof { "" } else { label(syntax(&file), field.cardinality(), field.is_map(), proto.proto3_optional()) };
    let mut options = Vec::new();
    if let Some(default) = proto.default_value.as_deref() {
        options.push(("default".to_string(), default_literal(&field.kind(), default)));
    }
    if proto.json_name.as_deref().is_some_and(|j| j != default_json_name(field.name())) {
        options.push(("json_name".to_string(), quote(field.json_name())));
    }
    options.extend(option_list(&field.options()));
    if field.is_group()
        && let Kind::Message(group) = field.kind()
    {
        out.line(format!("{label}group {} = {}{} {{", group.name(), field.number(), bracketed(&options)));
        out.indent += 1;
        message_body(out, &group);
        out.indent -= 1;
        out.line("}");
        return;
    }
    let type_name = if field.is_map() { map_type(field) } else { type_name(&field.kind()) };
    out.line(format!("{label}{type_name} {} = {}{};", field.name(), field.number(), bracketed(&options)));
}

fn extension_line(out: &mut Out, extension: &ExtensionDescriptor) {
    let file = extension.parent_file();
    out.comment(&file, extension.path());
    let proto = extension.field_descriptor_proto();
    let label = label(syntax(&file), extension.cardinality(), false, proto.proto3_optional());
    let mut options = Vec::new();
    if let Some(default) = proto.default_value.as_deref() {
        options.push(("default".to_string(), default_literal(&extension.kind(), default)));
    }
    options.extend(option_list(&extension.options()));
    out.line(format!(
        "{label}{} {} = {}{};",
        type_name(&extension.kind()),
        extension.name(),
        extension.number(),
        bracketed(&options)
    ));
}

/// ` [a = 1, b = 2]`, or nothing.
fn bracketed(options: &[(String, String)]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let list: Vec<String> = options.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    format!(" [{}]", list.join(", "))
}

fn map_type(field: &FieldDescriptor) -> String {
    let Kind::Message(entry) = field.kind() else { return type_name(&field.kind()) };
    format!(
        "map<{}, {}>",
        type_name(&entry.map_entry_key_field().kind()),
        type_name(&entry.map_entry_value_field().kind())
    )
}

/// A field's type as grpcurl writes it: a scalar's name, or a message or enum with its full name and a leading dot.
fn type_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!(".{}", m.full_name()),
        Kind::Enum(e) => format!(".{}", e.full_name()),
        scalar => micro_core::schema::keyword(scalar).into(),
    }
}

/// protoc's JSON name of a field: underscores dropped, the letter after each one upper-cased.
pub(crate) fn default_json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A proto2 default as written in a `.proto` file: strings quoted; bytes are already escaped in the descriptor.
fn default_literal(kind: &Kind, default: &str) -> String {
    match kind {
        Kind::String => quote(default),
        Kind::Bytes => format!("\"{default}\""),
        _ => default.to_string(),
    }
}

/// A string literal, escaped as protobuf's text format escapes it.
fn quote(text: &str) -> String {
    escape_bytes(text.as_bytes())
}

fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\{:03o}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out.push('"');
    out
}

/// The options set in an options message: `(name, value)` pairs, the standard ones by field number, then custom
/// ones (extensions) as `(full.name)`. A repeated option gives one pair per value.
fn option_list(options: &DynamicMessage) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut fields: Vec<(FieldDescriptor, &Value)> = options.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    for (field, value) in fields {
        push_option(&mut out, field.name().to_string(), &field.kind(), value);
    }
    let mut extensions: Vec<(ExtensionDescriptor, &Value)> = options.extensions().collect();
    extensions.sort_by_key(|(e, _)| e.number());
    for (extension, value) in extensions {
        push_option(&mut out, format!("({})", extension.full_name()), &extension.kind(), value);
    }
    out
}

fn push_option(out: &mut Vec<(String, String)>, name: String, kind: &Kind, value: &Value) {
    match value {
        Value::List(values) => {
            for v in values {
                out.push((name.clone(), option_value(kind, v)));
            }
        }
        v => out.push((name, option_value(kind, v))),
    }
}

/// An option's value as written in a `.proto` file.
fn option_value(kind: &Kind, value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => float(f64::from(*n)),
        Value::F64(n) => float(*n),
        Value::String(s) => quote(s),
        Value::Bytes(b) => escape_bytes(b),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => e.get_value(*n).map_or_else(|| n.to_string(), |v| v.name().to_string()),
            _ => n.to_string(),
        },
        Value::Message(m) => {
            let text = m.to_text_format();
            if text.is_empty() { "{ }".to_string() } else { format!("{{ {text} }}") }
        }
        Value::List(values) => {
            let items: Vec<String> = values.iter().map(|v| option_value(kind, v)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Map(_) => "{ }".to_string(),
    }
}

fn float(n: f64) -> String {
    if n.is_nan() {
        "nan".into()
    } else if n.is_infinite() {
        if n > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        n.to_string()
    }
}

fn enumeration(out: &mut Out, e: &EnumDescriptor) {
    out.comment(&e.parent_file(), e.path());
    out.line(format!("enum {} {{", e.name()));
    out.indent += 1;
    out.options(&e.options());
    let mut values: Vec<_> = e.values().collect();
    values.sort_by_key(|v| (v.number(), v.path().last().copied()));
    for v in &values {
        out.comment(&e.parent_file(), v.path());
        let options = option_list(&v.options());
        out.line(format!("{} = {}{};", v.name(), v.number(), bracketed(&options)));
    }
    let reserved: Vec<String> = e
        .reserved_ranges()
        .map(|r| {
            let (start, end) = (*r.start(), *r.end());
            if start == end {
                start.to_string()
            } else if end == i32::MAX {
                format!("{start} to max")
            } else {
                format!("{start} to {end}")
            }
        })
        .collect();
    if !reserved.is_empty() {
        out.line(format!("reserved {};", reserved.join(", ")));
    }
    let names: Vec<String> = e.reserved_names().map(quote).collect();
    if !names.is_empty() {
        out.line(format!("reserved {};", names.join(", ")));
    }
    out.indent -= 1;
    out.line("}");
}

#[cfg(test)]
mod tests;

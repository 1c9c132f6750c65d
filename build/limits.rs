//! Generates the input limits of `privacy.v1` (see `src/limits.rs`) from the
//! descriptors and their comments: a `Limits` walk for every message
//! reachable from an RPC's input, and a `DecodeCheck` for every RPC input and
//! output type.
//!
//! A field's limit comes from its leading comment when it contains
//! `At most N bytes.` (string and bytes fields, and each item of a repeated
//! one) or `At most N items.` (repeated and map fields); else the defaults
//! below, which must match `src/limits.rs`.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const DEFAULT_MAX_BYTES: usize = 1024;
const DEFAULT_MAX_ITEMS: usize = 1000;

/// The limits a comment states.
#[derive(Debug, Default, Clone, Copy)]
struct Stated {
    bytes: Option<usize>,
    items: Option<usize>,
}

/// Parses every `At most N bytes.` / `At most N items.` in a comment. Any
/// other `At most <number>` is a mistake in the contract: the build fails.
fn parse_stated(comment: &str, what: &str) -> Result<Stated, String> {
    let mut stated = Stated::default();
    let text = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut rest = text.as_str();
    while let Some(at) = rest.find("At most ") {
        rest = &rest[at + "At most ".len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            continue; // "At most this many ..."
        }
        let after = &rest[digits.len()..];
        let n: usize = digits
            .parse()
            .map_err(|e| format!("{what}: bad limit {digits}: {e}"))?;
        if after.starts_with(" bytes.") || after.starts_with(" bytes each.") {
            stated.bytes = Some(n);
        } else if after.starts_with(" items.") {
            stated.items = Some(n);
        } else {
            return Err(format!(
                "{what}: a limit must read \"At most N bytes.\" or \"At most N items.\", \
                 found \"At most {digits}{}\"",
                after.chars().take(12).collect::<String>()
            ));
        }
    }
    Ok(stated)
}

struct Msg<'a> {
    /// ".privacy.v1.Outer.Inner"
    full: String,
    desc: &'a DescriptorProto,
    /// Rust path from inside the generated module of its package.
    rust: String,
    /// Source path of the message in its file (for comments).
    file: usize,
    loc: Vec<i32>,
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// prost's identifier for a field or module name.
/// `ConsentService` → `consent_service`, `RecordConsent` → `record_consent`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn ident(name: &str) -> String {
    let snake = name.to_snake_case();
    match snake.as_str() {
        "self" | "super" | "crate" | "Self" => format!("{snake}_"),
        s if KEYWORDS.contains(&s) => format!("r#{snake}"),
        _ => snake,
    }
}

fn rust_package(package: &str) -> Result<String, String> {
    match package {
        "privacy.v1" => Ok("self".into()),
        "google.protobuf" => Ok("::prost_types".into()),
        other => Err(format!(
            "limits: package {other} has no Rust path; add it to build/limits.rs"
        )),
    }
}

fn collect<'a>(
    out: &mut BTreeMap<String, Msg<'a>>,
    file: usize,
    prefix: &str,
    rust_prefix: &str,
    msgs: &'a [DescriptorProto],
    loc: &[i32],
    tag: i32,
) {
    for (i, m) in msgs.iter().enumerate() {
        let full = format!("{prefix}.{}", m.name());
        let rust = format!("{rust_prefix}::{}", m.name().to_upper_camel_case());
        let mut here = loc.to_vec();
        here.extend([tag, i as i32]);
        collect(
            out,
            file,
            &full,
            &format!("{rust_prefix}::{}", ident(m.name())),
            &m.nested_type,
            &here,
            3,
        );
        out.insert(
            full.clone(),
            Msg {
                full,
                desc: m,
                rust,
                file,
                loc: here,
            },
        );
    }
}

/// The generated Rust source, to be included in the `privacy.v1` module.
pub fn generate(fds: &FileDescriptorSet) -> Result<String, String> {
    let mut msgs = BTreeMap::new();
    let mut comments: Vec<BTreeMap<Vec<i32>, String>> = Vec::new();
    for (fi, f) in fds.file.iter().enumerate() {
        let rust = rust_package(f.package())?;
        collect(
            &mut msgs,
            fi,
            &format!(".{}", f.package()),
            &rust,
            &f.message_type,
            &[],
            4,
        );
        let mut by_path = BTreeMap::new();
        if let Some(info) = &f.source_code_info {
            for l in &info.location {
                if let Some(c) = &l.leading_comments {
                    by_path.insert(l.path.clone(), c.clone());
                }
            }
        }
        comments.push(by_path);
    }

    // RPC inputs and outputs of privacy.v1, and each RPC's full name.
    let mut inputs = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    let mut methods = String::from(
        "/// Each RPC's full name, `privacy.v1.Service/Method`, as audit rows,\n\
         /// stored responses and logs record it: one constant per RPC, by service.\n\
         pub mod method {\n",
    );
    let mut all = String::from(
        "    /// Every RPC: (full name, service, method, kind as the gRPC ecosystem's\n\
         \x20   /// metrics name it: `unary`, `server_stream`...).\n\
         \x20   pub const ALL: &[(&str, &str, &str, &str)] = &[\n",
    );
    for f in fds.file.iter().filter(|f| f.package() == "privacy.v1") {
        for s in &f.service {
            writeln!(methods, "    pub mod {} {{", snake(s.name())).map_err(|e| e.to_string())?;
            for m in &s.method {
                inputs.insert(m.input_type().to_owned());
                outputs.insert(m.output_type().to_owned());
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (false, true) => "server_stream",
                    (true, false) => "client_stream",
                    (true, true) => "bidi_stream",
                };
                writeln!(
                    all,
                    "        (\"{pkg}.{svc}/{name}\", \"{pkg}.{svc}\", \"{name}\", \"{kind}\"),",
                    pkg = f.package(),
                    svc = s.name(),
                    name = m.name()
                )
                .map_err(|e| e.to_string())?;
                writeln!(
                    methods,
                    "        pub const {}: &str = \"{}.{}/{}\";",
                    snake(m.name()).to_uppercase(),
                    f.package(),
                    s.name(),
                    m.name()
                )
                .map_err(|e| e.to_string())?;
            }
            methods.push_str("    }\n");
        }
    }
    all.push_str("    ];\n");
    methods.push_str(&all);
    methods.push_str("}\n");
    if let Some(both) = inputs.intersection(&outputs).next() {
        // The codec checks a type's limits wherever it decodes it, so a
        // client would check such a response too.
        return Err(format!(
            "limits: {both} is both an RPC input and an output; give the output its own type"
        ));
    }

    // Messages reachable from an input.
    let mut reachable = BTreeSet::new();
    let mut queue: VecDeque<String> = inputs.iter().cloned().collect();
    while let Some(name) = queue.pop_front() {
        if !reachable.insert(name.clone()) {
            continue;
        }
        let m = msgs
            .get(&name)
            .ok_or_else(|| format!("limits: unknown type {name}"))?;
        for f in &m.desc.field {
            if f.r#type() != Type::Message {
                continue;
            }
            match msgs.get(f.type_name()) {
                // A map's entry is no Rust type: walk its value instead.
                Some(t) if t.desc.options.as_ref().is_some_and(|o| o.map_entry()) => {
                    let value = &t.desc.field[1];
                    if value.r#type() == Type::Message {
                        queue.push_back(value.type_name().to_owned());
                    }
                }
                _ => queue.push_back(f.type_name().to_owned()),
            }
        }
    }

    // Which reachable messages have anything to check (fixpoint over nesting).
    let mut needs: BTreeSet<String> = BTreeSet::new();
    loop {
        let before = needs.len();
        for name in &reachable {
            let m = &msgs[name];
            let any = m.desc.field.iter().any(|f| {
                f.label() == Label::Repeated
                    || matches!(f.r#type(), Type::String | Type::Bytes)
                    || (f.r#type() == Type::Message && needs.contains(f.type_name()))
            });
            if any {
                needs.insert(name.clone());
            }
        }
        if needs.len() == before {
            break;
        }
    }

    let mut code =
        String::from("// Input limits, generated by build.rs (build/limits.rs) from the protos.\n");
    code.push_str(&methods);
    for name in &needs {
        let m = &msgs[name];
        let mut body = String::new();
        for (fi, f) in m.desc.field.iter().enumerate() {
            let mut loc = m.loc.clone();
            loc.extend([2, fi as i32]);
            let what = format!("{}.{}", m.full.trim_start_matches('.'), f.name());
            let stated = match comments[m.file].get(&loc) {
                Some(c) => parse_stated(c, &what)?,
                None => Stated::default(),
            };
            body.push_str(&field_check(m, f, stated, &msgs, &needs, &what)?);
        }
        writeln!(
            code,
            "impl crate::limits::Limits for {} {{\n    #[allow(unused_variables)]\n    fn check_limits(&self, at: &crate::limits::Path<'_>, found: &mut crate::limits::Found) {{\n{body}    }}\n}}",
            m.rust
        )
        .map_err(|e| e.to_string())?;
    }
    for name in inputs.iter().chain(&outputs) {
        let m = msgs
            .get(name)
            .ok_or_else(|| format!("limits: unknown type {name}"))?;
        let is_request = inputs.contains(name);
        let check = if is_request && needs.contains(name) {
            "\n    fn request_violations(&self) -> Vec<crate::error::FieldViolation> {\n        crate::limits::Limits::limit_violations(self)\n    }"
        } else {
            ""
        };
        writeln!(
            code,
            "impl crate::limits::DecodeCheck for {} {{\n    const IS_REQUEST: bool = {is_request};{check}\n}}",
            m.rust
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(code)
}

/// The check of one field, as statements in `check_limits`.
fn field_check(
    m: &Msg<'_>,
    f: &FieldDescriptorProto,
    stated: Stated,
    msgs: &BTreeMap<String, Msg<'_>>,
    needs: &BTreeSet<String>,
    what: &str,
) -> Result<String, String> {
    let repeated = f.label() == Label::Repeated;
    let ty = f.r#type();
    let is_text = ty == Type::String;
    let is_bytes = ty == Type::Bytes;
    let map_entry = if ty == Type::Message {
        msgs.get(f.type_name())
            .filter(|t| t.desc.options.as_ref().is_some_and(|o| o.map_entry()))
    } else {
        None
    };
    if stated.items.is_some() && !repeated {
        return Err(format!(
            "{what}: \"At most N items.\" on a field that is not repeated"
        ));
    }
    let element_sized = is_text || is_bytes || map_entry.is_some();
    if stated.bytes.is_some() && !element_sized {
        return Err(format!(
            "{what}: \"At most N bytes.\" on a field that is neither string nor bytes"
        ));
    }
    let max_bytes = stated.bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let max_items = stated.items.unwrap_or(DEFAULT_MAX_ITEMS);
    let name = f.name();
    let rust = ident(name);
    let real_oneof = f.oneof_index.is_some() && !f.proto3_optional();

    if real_oneof {
        let oneof = &m.desc.oneof_decl[f.oneof_index() as usize];
        let parent_mod = m.rust.rsplit_once("::").map(|(p, _)| p).unwrap_or("self");
        let enum_path = format!(
            "{parent_mod}::{}::{}",
            ident(m.desc.name()),
            oneof.name().to_upper_camel_case()
        );
        let inner = match ty {
            Type::String => format!("found.text(v, at, \"{name}\", {max_bytes});"),
            Type::Bytes => format!("found.bytes(v, at, \"{name}\", {max_bytes});"),
            Type::Message if needs.contains(f.type_name()) => {
                format!("v.check_limits(&at.field(\"{name}\"), found);")
            }
            _ => return Ok(String::new()),
        };
        return Ok(format!(
            "        if let Some({enum_path}::{}(v)) = &self.{} {{ {inner} }}\n",
            name.to_upper_camel_case(),
            ident(oneof.name())
        ));
    }

    if let Some(entry) = map_entry {
        let key = &entry.desc.field[0];
        let value = &entry.desc.field[1];
        let mut per_item = String::new();
        if key.r#type() == Type::String {
            per_item.push_str(&format!("found.key(k, at, \"{name}\", {max_bytes}); "));
        }
        match value.r#type() {
            Type::String => per_item.push_str(&format!(
                "found.bytes_at(v.as_bytes(), &field.key(k), {max_bytes});"
            )),
            Type::Bytes => {
                per_item.push_str(&format!("found.bytes_at(v, &field.key(k), {max_bytes});"))
            }
            Type::Message if needs.contains(value.type_name()) => {
                per_item.push_str("v.check_limits(&field.key(k), found);")
            }
            _ => {}
        }
        if per_item.is_empty() {
            return Ok(format!(
                "        found.count(self.{rust}.len(), at, \"{name}\", {max_items});\n"
            ));
        }
        // Map values are named by their key; string values by the map.
        return Ok(format!(
            "        if found.count(self.{rust}.len(), at, \"{name}\", {max_items}) {{ let field = at.field(\"{name}\"); for (k, v) in &self.{rust} {{ {per_item} }} }}\n"
        ));
    }

    let optional = f.proto3_optional();
    Ok(match (repeated, ty) {
        (true, Type::String | Type::Bytes) => format!(
            "        found.items(&self.{rust}, at, \"{name}\", {max_items}, {max_bytes});\n"
        ),
        (true, Type::Message) if needs.contains(f.type_name()) => format!(
            "        if found.count(self.{rust}.len(), at, \"{name}\", {max_items}) {{ let field = at.field(\"{name}\"); for (i, v) in self.{rust}.iter().enumerate() {{ v.check_limits(&field.index(i), found); }} }}\n"
        ),
        (true, _) => {
            format!("        found.count(self.{rust}.len(), at, \"{name}\", {max_items});\n")
        }
        (false, Type::String) if optional => format!(
            "        if let Some(v) = &self.{rust} {{ found.text(v, at, \"{name}\", {max_bytes}); }}\n"
        ),
        (false, Type::String) => {
            format!("        found.text(&self.{rust}, at, \"{name}\", {max_bytes});\n")
        }
        (false, Type::Bytes) if optional => format!(
            "        if let Some(v) = &self.{rust} {{ found.bytes(v, at, \"{name}\", {max_bytes}); }}\n"
        ),
        (false, Type::Bytes) => {
            format!("        found.bytes(&self.{rust}, at, \"{name}\", {max_bytes});\n")
        }
        (false, Type::Message) if needs.contains(f.type_name()) => format!(
            "        if let Some(v) = &self.{rust} {{ v.check_limits(&at.field(\"{name}\"), found); }}\n"
        ),
        _ => String::new(),
    })
}

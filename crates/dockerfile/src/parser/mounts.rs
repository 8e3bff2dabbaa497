//! The syntax of a `RUN --mount=` value, checked as BuildKit's `parseMount` checks it: comma-
//! separated `key=value` fields (quotes allowed, as in its CSV reader), known keys only, a known
//! `type`, and a target where the type needs one. The value itself stays raw in the AST (it is
//! expanded and acted upon at build time); a spec that holds `$` is only split, since what it
//! says is known after expansion.

use crate::excerpt::excerpt;

/// Mount types BuildKit knows.
const TYPES: [&str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];

/// Keys BuildKit accepts with a value.
const KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "size",
    "env",
];

/// The keys a `RUN --mount=` value may hold, as the parser accepts them: for tests that hold
/// every key to the rule that it changes the build's result or fails it naming the key.
pub fn mount_keys() -> &'static [&'static str] {
    &KEYS
}

/// Keys that may stand alone (a boolean set to true).
const FLAGS: [&str; 5] = ["readonly", "ro", "readwrite", "rw", "required"];

/// Why `spec` (the text after `--mount=`) is not a mount, if it is not. Messages quote only
/// excerpts.
pub(super) fn check_mount(spec: &str) -> Result<(), String> {
    let fields = split_fields(spec)?;
    let expands = spec.contains('$');
    let mut kind = "bind";
    let mut target = false;
    for field in &fields {
        let Some((key, value)) = field.split_once('=') else {
            let key = field.to_ascii_lowercase();
            if FLAGS.contains(&key.as_str()) {
                continue;
            }
            return Err(format!(
                "field `{}` must be a key=value pair",
                excerpt(field)
            ));
        };
        let key = key.to_ascii_lowercase();
        if !KEYS.contains(&key.as_str()) {
            return Err(format!("unexpected key `{}`", excerpt(&key)));
        }
        match key.as_str() {
            "type" if !expands => {
                let Some(known) = TYPES.iter().find(|t| t.eq_ignore_ascii_case(value)) else {
                    return Err(format!(
                        "unsupported mount type `{}`: use bind, cache, tmpfs, secret or ssh",
                        excerpt(value)
                    ));
                };
                kind = known;
            }
            "target" | "dst" | "destination" => target = !value.is_empty() || expands,
            _ => {}
        }
    }
    if !expands && !target && !matches!(kind, "secret" | "ssh") {
        return Err(format!("a {kind} mount needs a target: add target=<path>"));
    }
    Ok(())
}

/// The fields of a `--mount=` value as `(lower-case key, value)`; a key standing alone has no
/// value. The build reads a mount through this after [`check_mount`] accepted it at parse time.
pub fn mount_fields(spec: &str) -> Result<Vec<(String, Option<String>)>, String> {
    Ok(split_fields(spec)?
        .into_iter()
        .map(|field| match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        })
        .collect())
}

/// Splits on commas outside double quotes; quotes are removed (Go's CSV reader, which BuildKit
/// uses, reads a field that starts with `"` as quoted).
fn split_fields(spec: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".to_string());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_mount_forms_are_accepted() {
        for ok in [
            "type=cache,target=/root/.cache",
            "type=cache,target=/var/cache/apt,sharing=locked",
            "type=secret,id=tok,dst=/tok",
            "type=secret,id=tok",
            "type=ssh",
            "type=bind,from=build,source=/out,target=/in,ro",
            "target=/src",
            "type=tmpfs,target=/tmp,size=64m",
            "type=secret,id=aws,env=AWS_TOKEN,required",
            "\"type=bind\",\"target=/a,b\"",
            "type=$T,target=$DIR",
            "TYPE=Cache,Target=/x",
        ] {
            assert_eq!(check_mount(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        for (bad, why) in [
            ("type=nope,target=/x", "unsupported mount type `nope`"),
            ("type=cache,,,===", "field `` must be a key=value pair"),
            ("", "field `` must be a key=value pair"),
            ("type=cache", "a cache mount needs a target"),
            ("type=bind,target=/x,colour=red", "unexpected key `colour`"),
            ("type=bind,\"target=/x", "unterminated quote"),
            ("=", "unexpected key ``"),
        ] {
            let err = check_mount(bad).expect_err(bad);
            assert!(err.starts_with(why), "{bad}: {err}");
        }
        let huge = format!("type={}", "z".repeat(1 << 20));
        assert!(check_mount(&huge).unwrap_err().len() < 200);
    }
}

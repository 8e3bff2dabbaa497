//! `RUN --mount=` values read into typed mounts with BuildKit's defaults
//! (`frontend/dockerfile/instructions/commands_runmount.go`): a bind is read-only unless `rw`,
//! a cache's id is its target, a secret's target is `/run/secrets/<id>` unless it goes to an
//! environment variable, a secret's mode is 0400, a cache's 0755. Values but `from` are expanded
//! with the stage's ARG and ENV values first, as BuildKit does.

/// One `--mount` of a `RUN`, with defaults applied. Targets are as written (relative ones are
/// resolved against WORKDIR by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        target: String,
        /// `from=`: a stage, an image, or (absent) the build context.
        from: Option<String>,
        source: String,
        readonly: bool,
    },
    Cache {
        target: String,
        id: String,
        /// `from=`: a stage or an image whose `source` seeds a new cache (BuildKit's rule), or
        /// (absent) an empty cache.
        from: Option<String>,
        source: String,
        sharing: Sharing,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        /// Bytes; `None` is the kernel's default (half the memory).
        size: Option<u64>,
    },
    Secret {
        id: String,
        /// `None` with `env=` and no `target=`: the secret only goes to the variable.
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        /// `None`: `/run/buildkit/ssh_agent.<n>`, `n` counting the step's ssh mounts.
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Any number of steps use it at once.
    Shared,
    /// A step that finds it in use gets a fresh directory.
    Private,
    /// One step at a time; the others wait.
    Locked,
}

/// Read one `--mount` value. `expand` expands `$VAR` in a value; it is called only on values
/// that hold a `$`.
pub fn parse_mount(
    spec: &str,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let mut kind = "bind".to_string();
    let mut fields: Vec<(String, Option<String>)> = Vec::new();
    for (key, value) in kiln_dockerfile::mount_fields(spec)? {
        // `from` is taken as written, as BuildKit takes it: what a step reads is planned before
        // any variable has a value.
        let value = match value {
            Some(v) if v.contains('$') && !key.eq_ignore_ascii_case("from") => Some(expand(&v)?),
            v => v,
        };
        if key == "type" {
            kind = value.clone().unwrap_or_default().to_ascii_lowercase();
        }
        fields.push((key, value));
    }
    let mut target = None;
    let mut from = None;
    let mut source = None;
    let mut readonly = None;
    let mut required = false;
    let mut id = None;
    let mut sharing = Sharing::Shared;
    let mut mode = None;
    let mut uid = None;
    let mut gid = None;
    let mut size = None;
    let mut env = None;
    for (key, value) in fields {
        let text = value.clone().unwrap_or_default();
        let flag = |v: &Option<String>| match v.as_deref() {
            None => Ok(true),
            Some(v) => parse_bool(v).ok_or_else(|| format!("invalid value {v:?} for {key}")),
        };
        match key.as_str() {
            "type" => {}
            "from" => from = Some(text),
            "source" | "src" => source = Some(text),
            "target" | "dst" | "destination" => target = Some(text),
            "readonly" | "ro" => readonly = Some(flag(&value)?),
            "readwrite" | "rw" => readonly = Some(!flag(&value)?),
            "required" => required = flag(&value)?,
            "id" => id = Some(text),
            "sharing" => {
                sharing = match text.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(format!(
                            "unsupported sharing value {text:?}: use shared, private or locked"
                        ))
                    }
                }
            }
            "mode" => {
                mode = Some(
                    u32::from_str_radix(&text, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("invalid mode {text:?}: give octal digits"))?,
                )
            }
            "uid" => uid = Some(parse_id(&text, "uid")?),
            "gid" => gid = Some(parse_id(&text, "gid")?),
            "size" => size = Some(parse_size(&text)?),
            "env" => env = Some(text),
            other => return Err(format!("unexpected key {other:?}")),
        }
    }
    let only = |allowed: &[(&str, bool)]| -> Result<(), String> {
        match allowed.iter().find(|(_, given)| *given) {
            Some((name, _)) => Err(format!("{name} is not an option of a {kind} mount")),
            None => Ok(()),
        }
    };
    let target_required = |t: Option<String>| {
        t.filter(|t| !t.is_empty())
            .ok_or_else(|| format!("a {kind} mount needs a target: add target=<path>"))
    };
    match kind.as_str() {
        "bind" => {
            only(&[
                ("id", id.is_some()),
                ("sharing", sharing != Sharing::Shared),
                ("size", size.is_some()),
                ("env", env.is_some()),
                ("required", required),
                ("mode", mode.is_some()),
                ("uid", uid.is_some()),
                ("gid", gid.is_some()),
            ])?;
            Ok(MountSpec::Bind {
                target: target_required(target)?,
                from: from.filter(|f| !f.is_empty()),
                source: source
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/".into()),
                readonly: readonly.unwrap_or(true),
            })
        }
        "cache" => {
            only(&[
                ("size", size.is_some()),
                ("env", env.is_some()),
                ("required", required),
            ])?;
            let target = target_required(target)?;
            Ok(MountSpec::Cache {
                id: id
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| target.clone()),
                target,
                from: from.filter(|f| !f.is_empty()),
                // BuildKit: the root of `from` unless `source` names a directory in it.
                source: source
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/".into()),
                sharing,
                readonly: readonly.unwrap_or(false),
                mode: mode.unwrap_or(0o755),
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
            })
        }
        "tmpfs" => {
            only(&[
                ("from", from.is_some()),
                ("source", source.is_some()),
                ("id", id.is_some()),
                ("sharing", sharing != Sharing::Shared),
                ("env", env.is_some()),
                ("required", required),
                ("mode", mode.is_some()),
                ("uid", uid.is_some()),
                ("gid", gid.is_some()),
                ("readonly", readonly.is_some()),
            ])?;
            Ok(MountSpec::Tmpfs {
                target: target_required(target)?,
                size,
            })
        }
        "secret" => {
            only(&[
                ("from", from.is_some()),
                ("sharing", sharing != Sharing::Shared),
                ("size", size.is_some()),
                ("readonly", readonly == Some(false)),
            ])?;
            let target = target.filter(|t| !t.is_empty());
            // BuildKit: `source` is another name for a secret's id.
            let id = match (
                id.filter(|i| !i.is_empty()),
                source.filter(|s| !s.is_empty()),
            ) {
                (Some(_), Some(_)) => return Err("both source and id are set: give one".into()),
                (id, source) => id.or(source),
            };
            let id = match (id, &target) {
                (Some(id), _) => id,
                // BuildKit: without an id, the target's file name is the id.
                (None, Some(t)) => t
                    .rsplit('/')
                    .find(|p| !p.is_empty())
                    .unwrap_or("")
                    .to_string(),
                (None, None) => return Err("a secret mount needs id=<id> or target=<path>".into()),
            };
            if id.is_empty() {
                return Err("a secret mount needs id=<id>".into());
            }
            let env = env.filter(|e| !e.is_empty());
            let target = match (target, &env) {
                (Some(t), _) => Some(t),
                (None, Some(_)) => None,
                (None, None) => Some(format!(
                    "/run/secrets/{}",
                    id.rsplit('/').find(|p| !p.is_empty()).unwrap_or(&id)
                )),
            };
            Ok(MountSpec::Secret {
                id,
                target,
                env,
                required,
                mode: mode.unwrap_or(0o400),
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
            })
        }
        "ssh" => {
            only(&[
                ("from", from.is_some()),
                ("source", source.is_some()),
                ("sharing", sharing != Sharing::Shared),
                ("size", size.is_some()),
                ("env", env.is_some()),
            ])?;
            Ok(MountSpec::Ssh {
                id: id
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "default".into()),
                target: target.filter(|t| !t.is_empty()),
                required,
                mode: mode.unwrap_or(0o600),
                uid: uid.unwrap_or(0),
                gid: gid.unwrap_or(0),
            })
        }
        other => Err(format!(
            "unsupported mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
        )),
    }
}

/// Go's `strconv.ParseBool`, which BuildKit uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_id(v: &str, what: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("invalid {what} {v:?}: give a number"))
}

/// A size as docker's `units.RAMInBytes` reads it: a number, optionally with a fraction, then
/// an optional binary unit `b`, `k`, `m`, `g`, `t`, `p` (any case, optionally followed by `b`
/// or `ib`).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {v:?}: give bytes or a number with k, m, g, t or p");
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<MountSpec, String> {
        parse_mount(spec, &|v: &str| Ok(v.replace("$DIR", "/expanded")))
    }

    #[test]
    fn buildkit_defaults() {
        assert_eq!(
            parse("type=secret,id=tok").unwrap(),
            MountSpec::Secret {
                id: "tok".into(),
                target: Some("/run/secrets/tok".into()),
                env: None,
                required: false,
                mode: 0o400,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(
            parse("type=secret,id=tok,env=TOKEN,required").unwrap(),
            MountSpec::Secret {
                id: "tok".into(),
                target: None,
                env: Some("TOKEN".into()),
                required: true,
                mode: 0o400,
                uid: 0,
                gid: 0
            }
        );
        match parse("type=secret,source=npm").unwrap() {
            MountSpec::Secret { id, target, .. } => {
                assert_eq!(
                    (id.as_str(), target.as_deref()),
                    ("npm", Some("/run/secrets/npm"))
                )
            }
            other => panic!("{other:?}"),
        }
        match parse("type=secret,target=/etc/key.pem,mode=0440,uid=10,gid=20").unwrap() {
            MountSpec::Secret {
                id, mode, uid, gid, ..
            } => assert_eq!((id.as_str(), mode, uid, gid), ("key.pem", 0o440, 10, 20)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("type=cache,target=$DIR,sharing=locked").unwrap(),
            MountSpec::Cache {
                target: "/expanded".into(),
                id: "/expanded".into(),
                from: None,
                source: "/".into(),
                sharing: Sharing::Locked,
                readonly: false,
                mode: 0o755,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(
            parse("type=cache,target=/c,from=$DIR,source=$DIR/seed,id=x").unwrap(),
            MountSpec::Cache {
                target: "/c".into(),
                id: "x".into(),
                from: Some("$DIR".into()),
                source: "/expanded/seed".into(),
                sharing: Sharing::Shared,
                readonly: false,
                mode: 0o755,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(
            parse("target=/src").unwrap(),
            MountSpec::Bind {
                target: "/src".into(),
                from: None,
                source: "/".into(),
                readonly: true
            }
        );
        assert_eq!(
            parse("type=bind,source=a,target=/src,rw").unwrap(),
            MountSpec::Bind {
                target: "/src".into(),
                from: None,
                source: "a".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse("type=tmpfs,target=/t,size=64m").unwrap(),
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20)
            }
        );
        assert_eq!(
            parse("type=ssh").unwrap(),
            MountSpec::Ssh {
                id: "default".into(),
                target: None,
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0
            }
        );
    }

    #[test]
    fn wrong_options_are_refused_naming_them() {
        for (bad, why) in [
            (
                "type=tmpfs,target=/t,id=x",
                "id is not an option of a tmpfs mount",
            ),
            (
                "type=cache,target=/c,sharing=maybe",
                "unsupported sharing value",
            ),
            ("type=cache,target=/c,mode=9", "invalid mode"),
            (
                "type=bind,target=/c,env=X",
                "env is not an option of a bind mount",
            ),
            (
                "type=secret",
                "a secret mount needs id=<id> or target=<path>",
            ),
            (
                "type=secret,id=a,ro=maybe",
                "invalid value \"maybe\" for ro",
            ),
            ("type=tmpfs,target=/t,size=12q", "invalid size"),
            ("type=cache,target=/c,uid=-1", "invalid uid"),
            ("type=nope,target=/c", "unsupported mount type"),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with(why), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        for (text, bytes) in [
            ("1024", 1024),
            ("1k", 1024),
            ("1KiB", 1024),
            ("1.5m", 3 << 19),
            ("2G", 2 << 30),
            ("10b", 10),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        assert!(parse_size("").is_err() && parse_size("m").is_err());
    }
}

//! The differences of representation set aside before Kiln's parse and BuildKit's are compared,
//! each named in [`RULES`] with its reason. A rule may only erase something one side does not
//! record at all (Kiln's AST is typed, BuildKit's node keeps words as written); it must never
//! hide a difference in what the instruction means. Everything else counts.

use super::dump::{Arg, Node};
use super::render::{Doc, Inst};
use super::{BkHeredoc, BkNode};

/// Every normalisation applied, with its reason; printed with each difference report.
pub const RULES: &[(&str, &str)] = &[
    (
        FLAG_ORDER,
        "Kiln keeps each flag's value in a typed field, not the order of different flags: flags \
         are compared sorted by name (values of a repeatable flag keep their order)",
    ),
    (
        BOOL_FLAG_SPELLING,
        "Kiln keeps COPY/ADD --link, --parents, --keep-git-dir as booleans: BuildKit's `--link=true` \
         (any case) is compared as `--link`, and `--link=false` as no flag",
    ),
    (
        HEALTHCHECK_SPELLING,
        "Kiln keeps HEALTHCHECK's type (NONE, CMD) as a variant and --retries as a number: the \
         type word is compared upper-cased and --retries as its decimal value",
    ),
    (
        ENV_LABEL_SEPARATOR,
        "BuildKit's ENV/LABEL node holds a third word per pair saying whether it was written \
         `k=v` or in the legacy `k v` form; Kiln keeps the pairs only",
    ),
    (
        FROM_STAGE_NAME,
        "Kiln keeps the stage name lower-cased (as BuildKit's instruction layer does) and not the \
         spelling of `AS`: both are compared as `AS <lower-case name>`",
    ),
    (
        HEREDOC_WORD,
        "Kiln replaces a heredoc's `[fd]<<[-]NAME` word, NAME possibly quoted or escaped (RUN's \
         whole command, COPY/ADD sources), by the heredoc it read; a word naming one of the \
         instruction's heredocs is compared as `<<NAME`, and the heredoc itself (name, file \
         descriptor, expansion, body) is compared",
    ),
    (
        HEREDOC_CHOMP,
        "Kiln strips the leading tabs of a `<<-` body while parsing; BuildKit's parser keeps them \
         and its instruction layer strips them (ChompHeredocContent): bodies are compared stripped",
    ),
    (
        EXEC_FORM,
        "Kiln records the exec (JSON) form where it changes meaning (RUN, CMD, ENTRYPOINT, SHELL, \
         HEALTHCHECK); for COPY/ADD/VOLUME the words are compared, not the form",
    ),
    (
        META_ARG_GROUPING,
        "Kiln keeps the ARGs before the first FROM as one list of declarations (no line, no \
         grouping into instructions): BuildKit's ARG instructions there are compared as one",
    ),
    (
        NO_STAGE_IS_REJECTED,
        "a file BuildKit's instruction layer parses into no stage is rejected by its \
         dockerfile2llb (`dockerfile contains no stages to build`), which the helper does not run",
    ),
    (
        ERROR_LINE,
        "where both reject a file, the line of the error is compared when BuildKit's instruction \
         layer rejected it (numbered by the instruction's first line, as Kiln does); the \
         positions of its parser's own errors are its scanner's (0-based in the directives, the \
         end of the file for an empty one) and are not compared",
    ),
    (
        FRAGMENTS,
        "where either side rejects the whole file (BuildKit's parser test files are syntax \
         tests, many without FROM), each instruction BuildKit's parser found is compared on its \
         own: Kiln parses the same lines with parse_instruction (a FROM as a one-stage file) and \
         BuildKit's verdict is instructions.ParseInstruction's",
    ),
];

pub const FLAG_ORDER: &str = "flag-order";
pub const BOOL_FLAG_SPELLING: &str = "bool-flag-spelling";
pub const HEALTHCHECK_SPELLING: &str = "healthcheck-spelling";
pub const ENV_LABEL_SEPARATOR: &str = "env-label-separator";
pub const FROM_STAGE_NAME: &str = "from-stage-name";
pub const HEREDOC_WORD: &str = "heredoc-word";
pub const HEREDOC_CHOMP: &str = "heredoc-chomp";
pub const EXEC_FORM: &str = "exec-form";
pub const META_ARG_GROUPING: &str = "meta-arg-grouping";
pub const NO_STAGE_IS_REJECTED: &str = "no-stage-is-rejected";
pub const ERROR_LINE: &str = "error-line";
pub const FRAGMENTS: &str = "fragments";

/// BuildKit's node as the comparison sees it: the dump parsed, the extras attached, and the
/// BuildKit-side rules applied.
pub fn buildkit(n: &BkNode) -> Result<Inst, String> {
    let mut node = super::dump::parse_node(&n.dump)?;
    let heredocs: Vec<Doc> = n.heredocs.iter().map(chomped).collect();
    buildkit_node(&mut node, &heredocs);
    Ok(Inst {
        node,
        line: Some(n.line),
        json: Some(n.json),
        heredocs,
    })
}

/// HEREDOC_CHOMP.
fn chomped(h: &BkHeredoc) -> Doc {
    let content = if h.chomp {
        h.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    } else {
        h.content.clone()
    };
    Doc {
        name: h.name.clone(),
        fd: h.fd,
        expand: h.expand,
        content,
    }
}

fn buildkit_node(node: &mut Node, heredocs: &[Doc]) {
    match node.keyword.as_str() {
        "env" | "label" => separators(node),
        "from" => stage_name(node),
        "healthcheck" => healthcheck(node),
        "run" | "copy" | "add" => heredoc_words(node, heredocs),
        _ => {}
    }
    bool_flags(node);
    for arg in &mut node.args {
        if let Arg::Sub(sub) = arg {
            buildkit_node(sub, heredocs);
        }
    }
}

/// ENV_LABEL_SEPARATOR: (key, value, "=" | "") triples become pairs.
fn separators(node: &mut Node) {
    let words: Vec<&str> = node.strs().collect();
    let triples = words.len() % 3 == 0 && words.chunks(3).all(|t| matches!(t[2], "=" | ""));
    if !triples || words.len() != node.args.len() {
        return;
    }
    node.args = node.args.chunks(3).flat_map(|t| t[..2].to_vec()).collect();
}

/// FROM_STAGE_NAME.
fn stage_name(node: &mut Node) {
    if let [Arg::Str(_), Arg::Str(as_kw), Arg::Str(name)] = node.args.as_mut_slice() {
        if as_kw.eq_ignore_ascii_case("as") {
            *as_kw = "AS".into();
            *name = name.to_ascii_lowercase();
        }
    }
}

/// HEALTHCHECK_SPELLING.
fn healthcheck(node: &mut Node) {
    if let Some(Arg::Str(kind)) = node.args.first_mut() {
        *kind = kind.to_ascii_uppercase();
    }
    for flag in &mut node.flags {
        if let Some(n) = flag
            .strip_prefix("--retries=")
            .and_then(|v| v.parse::<u32>().ok())
        {
            *flag = format!("--retries={n}");
        }
    }
}

/// BuildKit's heredoc word regex `^(\d*)<<(-?)\s*([^<]*)$` with the quotes and backslash escapes
/// of the name removed, when that name is one of `heredocs`.
fn heredoc_name<'a>(word: &str, heredocs: &'a [Doc]) -> Option<&'a str> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    if rest.contains('<') {
        return None;
    }
    let name = unquote(rest);
    heredocs
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.name.as_str())
}

/// A shell word's quotes and escapes removed (`E"O"F`, `'EOF'`, `\EOF` are `EOF`): outside
/// quotes a backslash takes the next character as it is; in double quotes it does so before
/// `"`, `$` and `\` only; in single quotes it is literal.
fn unquote(word: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '\\') => out.extend(chars.next()),
            (Some('"'), '\\') if matches!(chars.peek(), Some('"' | '$' | '\\')) => {
                out.extend(chars.next())
            }
            _ => out.push(c),
        }
    }
    out
}

/// HEREDOC_WORD.
fn heredoc_words(node: &mut Node, heredocs: &[Doc]) {
    let whole_command = node.keyword == "run";
    if whole_command && node.args.len() != 1 {
        return;
    }
    for arg in &mut node.args {
        if let Arg::Str(word) = arg {
            if let Some(name) = heredoc_name(word, heredocs) {
                *word = format!("<<{name}");
            }
        }
    }
}

/// BOOL_FLAG_SPELLING.
fn bool_flags(node: &mut Node) {
    if !matches!(node.keyword.as_str(), "copy" | "add") {
        return;
    }
    node.flags.retain_mut(|flag| {
        for name in ["link", "parents", "keep-git-dir"] {
            let Some(rest) = flag.strip_prefix(&format!("--{name}")) else {
                continue;
            };
            match rest.to_ascii_lowercase().as_str() {
                "" | "=true" => *flag = format!("--{name}"),
                "=false" => return false,
                _ => {}
            }
        }
        true
    });
}

/// FLAG_ORDER and EXEC_FORM, for a pair about to be compared; and `line` only where Kiln keeps
/// one (META_ARG_GROUPING).
pub fn pair(kiln: &mut Inst, buildkit: &mut Inst) {
    sort_flags(&mut kiln.node);
    sort_flags(&mut buildkit.node);
    if kiln.json.is_none() {
        buildkit.json = None;
    }
    if kiln.line.is_none() {
        buildkit.line = None;
    }
}

fn sort_flags(node: &mut Node) {
    node.flags.sort_by(|a, b| flag_name(a).cmp(flag_name(b)));
    for arg in &mut node.args {
        if let Arg::Sub(sub) = arg {
            sort_flags(sub);
        }
    }
}

fn flag_name(flag: &str) -> &str {
    flag.split_once('=').map_or(flag, |(n, _)| n)
}

/// META_ARG_GROUPING: the ARG instructions before the first FROM become one.
pub fn group_meta_args(insts: Vec<Inst>) -> Vec<Inst> {
    let first_from = insts
        .iter()
        .position(|i| i.node.keyword == "from")
        .unwrap_or(insts.len());
    let (meta, rest) = insts.split_at(first_from);
    if meta.is_empty() || !meta.iter().all(|i| i.node.keyword == "arg") {
        return insts;
    }
    let mut node = Node::new("arg");
    node.args = meta
        .iter()
        .flat_map(|i| i.node.args.iter().cloned())
        .collect();
    let mut out = vec![Inst {
        node,
        line: None,
        json: None,
        heredocs: Vec::new(),
    }];
    out.extend(rest.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkit::dump::parse_node;

    fn doc(name: &str) -> Doc {
        Doc {
            name: name.into(),
            fd: 0,
            expand: true,
            content: String::new(),
        }
    }

    fn normalised(dump: &str, heredocs: &[Doc]) -> String {
        let mut node = parse_node(dump).unwrap();
        buildkit_node(&mut node, heredocs);
        node.to_string()
    }

    #[test]
    fn rules_erase_spelling_only() {
        assert_eq!(
            normalised(r#"env "a" "b" "=" "c" "d e" """#, &[]),
            r#"env "a" "b" "c" "d e""#
        );
        // Not separator triples: left alone, so the difference shows.
        assert_eq!(normalised(r#"env "a" "b" "x""#, &[]), r#"env "a" "b" "x""#);
        assert_eq!(
            normalised(
                r#"copy ["--link=TRUE" "--parents=false" "--keep-git-dir=yes"] "a" "b""#,
                &[]
            ),
            r#"copy ["--link" "--keep-git-dir=yes"] "a" "b""#
        );
        assert_eq!(
            normalised(r#"from "a" "as" "Build""#, &[]),
            r#"from "a" "AS" "build""#
        );
        assert_eq!(
            normalised(r#"healthcheck ["--retries=03"] "cmd" "x""#, &[]),
            r#"healthcheck ["--retries=3"] "CMD" "x""#
        );
    }

    #[test]
    fn heredoc_words_only_for_the_instructions_heredocs() {
        assert_eq!(
            normalised(r#"run "<<-\"EOF\"""#, &[doc("EOF")]),
            r#"run "<<EOF""#
        );
        assert_eq!(
            normalised(r#"run "<<EOF cat""#, &[doc("EOF")]),
            r#"run "<<EOF cat""#
        );
        assert_eq!(
            normalised(r#"copy "<<'A'" "<<B" "/d""#, &[doc("A")]),
            r#"copy "<<A" "<<B" "/d""#
        );
        assert_eq!(
            normalised(r#"run "<< \\EOF""#, &[doc("EOF")]),
            r#"run "<<EOF""#
        );
        assert_eq!(unquote(r#"E"O"F"#), "EOF");
        assert_eq!(unquote(r#"'\E'"\"\x""#), r#"\E"\x"#);
    }

    #[test]
    fn chomp_strips_leading_tabs_of_each_line() {
        let h = BkHeredoc {
            name: "E".into(),
            fd: 0,
            expand: true,
            chomp: true,
            content: "\t\ta\n  b\n\tc\n".into(),
        };
        assert_eq!(chomped(&h).content, "a\n  b\nc\n");
    }

    #[test]
    fn meta_args_are_grouped_before_the_first_from_only() {
        let inst = |dump: &str, line| Inst {
            node: parse_node(dump).unwrap(),
            line: Some(line),
            json: None,
            heredocs: Vec::new(),
        };
        let grouped = group_meta_args(vec![
            inst(r#"arg "A""#, 1),
            inst(r#"arg "B=1" "C""#, 2),
            inst(r#"from "x""#, 3),
            inst(r#"arg "D""#, 4),
        ]);
        let shown: Vec<String> = grouped.iter().map(|i| i.node.to_string()).collect();
        assert_eq!(shown, [r#"arg "A" "B=1" "C""#, r#"from "x""#, r#"arg "D""#]);
        assert_eq!(grouped[0].line, None);
    }
}

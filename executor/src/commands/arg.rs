//! `ARG`: declares build arguments for the rest of the stage. The value is, in order: the
//! `--build-arg`, the default written here (expanded), the global ARG of the same name. The name is
//! expanded too (`ARG ${src}=x` declares the ARG that `src` names), as BuildKit does.

use super::{Command, InstructionError, StageState};
use kiln_dockerfile::ArgDecl;

pub struct Arg<'a>(pub &'a [ArgDecl]);

impl Command for Arg<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        for decl in self.0 {
            let name = state.expand(&decl.name)?;
            let value = if let Some(v) = state.build_args.get(&name) {
                Some(v.clone())
            } else if let Some(default) = &decl.default {
                Some(state.expand(default)?)
            } else {
                state.meta_args.get(&name).cloned().flatten()
            };
            state.args.insert(name, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    #[test]
    fn the_name_is_expanded_before_it_is_declared() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.config.config.env = Some(vec!["src=file3".to_string(), "baz=baz".to_string()]);
        st.build_args
            .insert("file3".to_string(), "context/b*".to_string());
        let decls = [
            ArgDecl {
                name: "${src}".to_string(),
                default: Some("context/bar/${baz}".to_string()),
                line: 1,
            },
            ArgDecl {
                name: "other".to_string(),
                default: Some("x/${baz}".to_string()),
                line: 2,
            },
        ];
        Arg(&decls).configure(&mut st).unwrap();
        assert_eq!(st.args.get("file3"), Some(&Some("context/b*".to_string())));
        assert_eq!(st.args.get("other"), Some(&Some("x/baz".to_string())));
        assert!(!st.args.contains_key("${src}"));
    }
}

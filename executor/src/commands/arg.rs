//! `ARG`: declares build arguments for the rest of the stage. The value is, in order: the
//! `--build-arg`, the default written here (expanded), the global ARG of the same name.

use super::{CommandError, Outcome, StageState};
use kiln_dockerfile::ArgDecl;

pub fn execute(decls: &[ArgDecl], state: &mut StageState) -> Result<Outcome, CommandError> {
    for decl in decls {
        let value = if let Some(v) = state.build_args.get(&decl.name) {
            Some(v.clone())
        } else if let Some(default) = &decl.default {
            Some(state.expand(default)?)
        } else {
            state.meta_args.get(&decl.name).cloned().flatten()
        };
        state.args.insert(decl.name.clone(), value);
    }
    Ok(Outcome::ConfigOnly)
}

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

//! `ENV`: sets variables in the image config. Every pair is expanded with the environment as it
//! was before the instruction: `ENV A=1 B=$A` does not see the new `A` (Docker's documented rule).

use super::{Command, InstructionError, StageState};

pub struct Env<'a>(pub &'a [(String, String)]);

impl Command for Env<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let mut expanded = Vec::with_capacity(self.0.len());
        for (raw_key, raw_value) in self.0 {
            let key = state.expand(raw_key)?;
            if key.is_empty() {
                return Err(InstructionError::Invalid(
                    "ENV names must not be empty".into(),
                ));
            }
            expanded.push((key, state.expand(raw_value)?));
        }
        for (key, value) in expanded {
            state.config.set_env(&key, &value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::state;

    #[test]
    fn pairs_see_the_environment_from_before_the_instruction() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.config.set_env("APP", "old");
        let pairs = vec![
            ("APP".to_string(), "new".to_string()),
            ("DIR".to_string(), "/opt/$APP".to_string()),
        ];
        Env(&pairs).configure(&mut st).unwrap();
        assert_eq!(st.config.env_value("APP").as_deref(), Some("new"));
        assert_eq!(st.config.env_value("DIR").as_deref(), Some("/opt/old"));
    }
}

//! `ENV`: sets variables in the image config. Each pair is expanded with the values set by the
//! pairs before it on the same line, as Docker does.

use super::{CommandError, Outcome, StageState};

pub fn execute(pairs: &[(String, String)], state: &mut StageState) -> Result<Outcome, CommandError> {
    for (raw_key, raw_value) in pairs {
        let key = state.expand(raw_key)?;
        if key.is_empty() {
            return Err(CommandError::Invalid("ENV names must not be empty".into()));
        }
        let value = state.expand(raw_value)?;
        state.config.set_env(&key, &value);
    }
    Ok(Outcome::ConfigOnly)
}

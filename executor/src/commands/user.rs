//! `USER`: sets the user (and optional group) later RUN steps and the container run as.
//! The name is resolved against the image's /etc/passwd only when something runs as it.

use super::{CommandError, Outcome, StageState};

pub fn execute(raw: &str, state: &mut StageState) -> Result<Outcome, CommandError> {
    let user = state.expand(raw)?;
    if user.is_empty() {
        return Err(CommandError::Invalid(
            "USER requires a user name or id".into(),
        ));
    }
    state.config.config.user = Some(user);
    Ok(Outcome::ConfigOnly)
}

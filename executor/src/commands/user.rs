//! `USER`: sets the user (and optional group) later RUN steps and the container run as.
//! The name is resolved against the image's /etc/passwd only when something runs as it.

use super::{Command, InstructionError, StageState};

pub struct User<'a>(pub &'a str);

impl Command for User<'_> {
    fn configure(&self, state: &mut StageState) -> Result<(), InstructionError> {
        let user = state.expand(self.0)?;
        if user.is_empty() {
            return Err(InstructionError::Invalid(
                "USER requires a user name or id".into(),
            ));
        }
        state.config.config.user = Some(user);
        Ok(())
    }
}

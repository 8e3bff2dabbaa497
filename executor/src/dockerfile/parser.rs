//! Dockerfile text → [`Dockerfile`]. (being written)
use super::ast::Dockerfile;

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

pub fn parse(_text: &str) -> Result<Dockerfile, ParseError> {
    Err(ParseError { line: 0, message: "parser not written yet".into() })
}

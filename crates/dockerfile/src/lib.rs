//! Dockerfile frontend: text → instructions ([`ast`]) and ARG/ENV word expansion ([`expand`]).
//! Pure: reads strings, never touches the filesystem or runs anything.

pub mod ast;
pub mod expand;
pub mod parser;

pub use ast::*;
pub use expand::{expand_word, expand_words, ExpandError};
pub use parser::{parse, parse_instruction, ParseError};

//! Dockerfile frontend: text → instructions ([`ast`]), ARG/ENV word expansion ([`expand`]) and
//! what each stage's FROM names ([`stages`]); errors quote the Dockerfile only through bounded
//! excerpts ([`excerpt`]). Pure: reads strings, never touches the filesystem or runs anything (a
//! bare `--build-arg KEY` reads the environment, as kaniko's does).

pub mod ast;
pub mod excerpt;
pub mod expand;
pub mod parser;
pub mod stages;

pub use ast::*;
pub use expand::{expand_word, expand_words, ExpandError};
pub use parser::{
    decode, instruction_flags, mount_fields, mount_keys, parse, parse_bytes, parse_instruction,
    FlagKind, ParseError,
};
pub use stages::{Base, FromPlatform, ResolvedStage, StageError, Stages, TargetError};

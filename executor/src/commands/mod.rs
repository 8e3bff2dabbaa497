//! One module per Dockerfile instruction behind the [`Command`] trait.

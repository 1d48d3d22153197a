//! Placeholder: the static first stage lands in a later commit.

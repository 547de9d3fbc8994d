//! How an error is written into a log line: its whole chain of causes, in one field.

/// `err` and its sources, joined: the whole story in one log field.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! Hookyard: a webhook gateway.

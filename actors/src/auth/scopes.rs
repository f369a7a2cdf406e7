//! The scope vocabulary of API keys and tokens. A key holds a list of
//! scopes; `*` holds them all. Every route names the scope it needs (the
//! route table in `src/http/`), and a key only creates keys whose scopes
//! it holds itself.

/// Every scope there is.
pub const SCOPES: &[&str] =
    &["*", "models", "chat", "completions", "embeddings", "keys", "admin", "metrics", "usage"];

/// Whether `held` allows `needed`.
pub fn grant(held: &[String], needed: &str) -> bool {
    held.iter().any(|scope| scope == "*" || scope == needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_grants_everything_and_a_list_only_itself() {
        let star = vec!["*".to_owned()];
        let embeddings = vec!["embeddings".to_owned()];
        assert!(grant(&star, "admin") && grant(&star, "*"));
        assert!(grant(&embeddings, "embeddings"));
        assert!(!grant(&embeddings, "chat") && !grant(&embeddings, "*") && !grant(&[], "models"));
    }
}

//! Random, unguessable ids: request ids (`chatcmpl-…`) and the ids of feedback, keys and
//! experiments.

/// Base-62 characters (request ids).
pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Lower-case base-36 characters (feedback and experiment ids).
pub const BASE36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// `prefix` + `n` random characters of `alphabet` (unguessable ids).
pub fn random_id(prefix: &str, alphabet: &[u8], n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    for _ in 0..n {
        s.push(alphabet[rng.gen_range(0..alphabet.len())] as char);
    }
    s
}

/// `chatcmpl-` + 24 random base-62 characters: unique, unguessable, OpenAI-looking.
pub fn new_request_id() -> String {
    random_id("chatcmpl-", BASE62, 24)
}

//! The one short digest the operator stamps on what it writes, so it can tell later whether
//! what it would write now differs.

/// A short hex SHA-256 digest of `parts` (each length-prefixed, so no two lists collide by
/// joining).
pub fn of(parts: &[&str]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    context.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn parts_are_not_joined() {
        assert_ne!(of(&["ab", "c"]), of(&["a", "bc"]));
        assert_eq!(of(&["ab", "c"]), of(&["ab", "c"]));
        assert_eq!(of(&["x"]).len(), 16);
    }
}

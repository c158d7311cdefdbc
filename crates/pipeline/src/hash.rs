//! Hashing that must come out the same on every machine, in every Rust release and after every
//! restart: names of the Abnormals triggers create, incident labels, a probe's jitter, the node
//! that stands in for a pod on none. 64-bit FNV-1a (the `fnv` crate), the hash Prometheus
//! fingerprints label sets with; `std`'s `DefaultHasher` is explicitly unspecified across releases.

use std::hash::Hasher as _;

pub use fnv::FnvHasher;

/// 64-bit FNV-1a of `bytes`. For several parts, write them to an [`FnvHasher`].
pub fn fnv1a(bytes: impl AsRef<[u8]>) -> u64 {
    let mut h = FnvHasher::default();
    h.write(bytes.as_ref());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_64_bit_function() {
        // The reference test vectors of the FNV authors.
        assert_eq!(fnv1a(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a("foobar"), 0x85944171f73967e8);
        let mut h = FnvHasher::default();
        h.write(b"foo");
        h.write(b"bar");
        assert_eq!(
            h.finish(),
            fnv1a("foobar"),
            "parts hash as their concatenation"
        );
    }
}

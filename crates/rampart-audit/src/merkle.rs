//! RFC 6962 §2.1 Merkle tree hash over record hashes, kept as a compact range (the roots of the
//! perfect subtrees that make up the tree, largest first) so that appending is O(1) amortised,
//! the root is O(log n), and a checkpoint can carry the whole state in ⌈log2 n⌉ hashes.
//!
//! Leaves are the 32-byte record hashes: `leaf = SHA-256(0x00 || record_hash)`,
//! `node = SHA-256(0x01 || left || right)`, the empty tree is `SHA-256("")`.

use serde::{Deserialize, Serialize};

use crate::hash::Hash;

pub fn leaf_hash(data: &[u8]) -> Hash {
    Hash::sha256(&[&[0u8], data])
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Hash::sha256(&[&[1u8], &left.0, &right.0])
}

pub fn empty_root() -> Hash {
    Hash::sha256(&[])
}

/// The recursive definition of RFC 6962, over whole leaf data: the reference the compact range
/// is tested against.
pub fn reference_root(leaves: &[&[u8]]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaf_hash(leaves[0]),
        n => {
            // The largest power of two strictly below n.
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

/// The state of a Merkle tree that is only ever appended to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompactRange {
    pub size: u64,
    /// Roots of the perfect subtrees for the set bits of `size`, most significant first.
    pub nodes: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds from a stored state, refusing node lists that cannot belong to `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(CompactRange { size, nodes })
    }

    pub fn push_leaf_data(&mut self, data: &[u8]) {
        let mut h = leaf_hash(data);
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit has its subtree");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    pub fn push(&mut self, record_hash: &Hash) {
        self.push_leaf_data(&record_hash.0);
    }

    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The leaves and roots of the Certificate Transparency reference test data
    // (certificate-transparency-go, merkle/testonly): MTH(D[0..n]) for n = 1..=8.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn spec_13_4_1_merkle_root_matches_rfc6962_reference_vectors() {
        let mut cr = CompactRange::new();
        assert_eq!(
            cr.root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (n, leaf) in LEAVES.iter().enumerate() {
            cr.push_leaf_data(leaf);
            assert_eq!(cr.root().to_hex(), ROOTS[n], "compact range, size {}", n + 1);
            assert_eq!(
                reference_root(&LEAVES[..=n]).to_hex(),
                ROOTS[n],
                "recursive, size {}",
                n + 1
            );
            assert_eq!(cr.nodes.len(), cr.size.count_ones() as usize);
        }
    }

    #[test]
    fn spec_13_4_1_compact_range_agrees_with_recursive_definition_up_to_70_leaves() {
        let data: Vec<[u8; 8]> = (0u64..70).map(|i| i.to_be_bytes()).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut cr = CompactRange::new();
        for n in 0..refs.len() {
            cr.push_leaf_data(refs[n]);
            assert_eq!(cr.root(), reference_root(&refs[..=n]), "size {}", n + 1);
        }
        let copy = CompactRange::from_parts(cr.size, cr.nodes.clone()).unwrap();
        assert_eq!(copy.root(), cr.root());
        assert!(CompactRange::from_parts(cr.size + 1, cr.nodes.clone()).is_none());
    }
}

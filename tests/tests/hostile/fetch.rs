//! Attacks on fetch and the provider records: Sybil providers that hide a holder, a flooded provider store.

//! Attacks on holders: one peer taking every exchange slot, slow drips, racing stores of one id, and honest concurrency under load.

//! Attacks on the auth server: login-state floods, registration floods, unread WatchPending streams, oversize locators and plaintext endpoints.

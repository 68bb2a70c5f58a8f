//! The per-address registration limit and the per-user write limit, on
//! the service with a real single-member group.

use super::*;

#[tokio::test]
async fn registrations_are_limited_per_address_and_loopback_only_server_wide() {
    let h = Harness::start().await;
    let per_address = h.svc.config().registrations_per_minute_per_address;
    let a: std::net::IpAddr = "203.0.113.5".parse().unwrap();
    for i in 0..per_address {
        h.register_from(&format!("addr-a{i}"), Some(a))
            .await
            .unwrap();
    }
    let err = h.register_from("a-more", Some(a)).await.err().unwrap();
    assert!(
        matches!(
            err,
            AuthError::RateLimited {
                key: "registrations_per_minute_per_address",
                ..
            }
        ),
        "{err}"
    );
    // The same /64 is the same party; another address and loopback are not.
    let a6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
    let b6: std::net::IpAddr = "2001:db8::ffff:2".parse().unwrap();
    for i in 0..per_address {
        h.register_from(&format!("addr-v{i}"), Some(a6))
            .await
            .unwrap();
    }
    assert!(h.register_from("v-more", Some(b6)).await.is_err());
    h.register_from("other", Some("198.51.100.7".parse().unwrap()))
        .await
        .unwrap();
    for i in 0..per_address + 1 {
        h.register_from(&format!("addr-l{i}"), Some("127.0.0.1".parse().unwrap()))
            .await
            .unwrap();
    }
    h.stop().await;
}

#[tokio::test]
async fn set_retention_is_limited_per_user() {
    let h = Harness::start().await;
    let id = h.register("bob").await;
    let bob = h.login("bob", &id).await;
    let limit = h.svc.config().writes_per_minute_per_user;
    for _ in 0..limit {
        h.svc.set_retention(&bob.session, 0).await.unwrap();
    }
    let err = h.svc.set_retention(&bob.session, 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::RateLimited {
                retry_after_secs: 2,
                ..
            }
        ),
        "{err}"
    );
    h.stop().await;
}

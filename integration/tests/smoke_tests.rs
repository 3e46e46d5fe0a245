//! The shortest end-to-end path: one push link, one key, through the real stack.

use std::time::Duration;

use crate::support::hub::{Hub, LinkSpec, config_yaml};
use crate::support::poll_until;
use crate::support::stack::{Stack, StackOptions};

#[test]
fn a_local_write_appears_remotely() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let yaml = config_yaml(&stack, port, &[LinkSpec::new("smoke", "push", "app:").remote_prefix("site-a:app:")]);
    let hub = Hub::start_ready(stack.dir(), &yaml, port);
    stack.local().conn().set("app:k", "v1");
    let mut remote = stack.remote().conn();
    let copied = poll_until(Duration::from_secs(10), || remote.get("site-a:app:k"));
    assert_eq!(copied.as_deref(), Some(&b"v1"[..]), "{}", hub.log_tail(40));
}

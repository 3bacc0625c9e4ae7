//! `GET /dashboard` and its files: embedded, no credential, a strict policy.

use crate::helpers::TestApp;

both_stores!(the_dashboard_and_its_files_are_served_with_a_strict_policy);

async fn the_dashboard_and_its_files_are_served_with_a_strict_policy(app: TestApp) {
    for (path, content_type, marker) in [
        (
            "/dashboard",
            "text/html",
            "<label for=\"api-key\">API key</label>",
        ),
        ("/dashboard/app.js", "text/javascript", "sessionStorage"),
        ("/dashboard/app.css", "text/css", ":root"),
        ("/dashboard/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let reply = app.send(app.client.get(app.url(path))).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            reply
                .header("content-type")
                .is_some_and(|v| v.starts_with(content_type)),
            "{path}"
        );
        let policy = reply.header("content-security-policy").unwrap_or_default();
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(reply.text.contains(marker), "{path}");
    }
    // The page loads no script or style from anywhere else, and none inline.
    let page = app.send(app.client.get(app.url("/dashboard"))).await.text;
    assert!(
        !page.contains("<style") && !page.contains(" style="),
        "inline style"
    );
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script type=\"module\" src=\"/dashboard/app.js\"></script>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "another origin"
    );
}

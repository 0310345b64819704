use super::*;

#[test]
fn path_regexes() {
    let regex = |kind: PathMatch, p: &str| path_regex(&(kind, p.to_string()));
    assert_eq!(regex(PathMatch::Prefix, "/"), None);
    assert_eq!(regex(PathMatch::Prefix, ""), None);
    assert_eq!(regex(PathMatch::Prefix, "//"), None);
    assert_eq!(
        regex(PathMatch::Prefix, "/api"),
        Some("^/api(?s:/.*)?$".into())
    );
    assert_eq!(
        regex(PathMatch::Prefix, "/api/"),
        Some("^/api(?s:/.*)?$".into())
    );
    assert_eq!(
        regex(PathMatch::Prefix, "/v1.0/a+b"),
        Some(r"^/v1\.0/a\+b(?s:/.*)?$".into())
    );
    assert_eq!(regex(PathMatch::Exact, "/x"), Some("^/x$".into()));
    assert_eq!(regex(PathMatch::Exact, "/"), Some("^/$".into()));
    assert_eq!(
        regex(PathMatch::Exact, "/a.b(c)[d]$"),
        Some(r"^/a\.b\(c\)\[d\]\$$".into())
    );
    assert_eq!(
        regex(PathMatch::RegularExpression, "/img/.*\\.png"),
        Some("^/img/.*\\.png".into())
    );
    assert_eq!(
        regex(PathMatch::RegularExpression, "^/already$"),
        Some("^/already$".into())
    );

    // The host reads back what it can reason about.
    let shape = |p: &str| PathShape::of(Some(p));
    assert_eq!(
        shape(r"^/v1\.0(?s:/.*)?$"),
        PathShape::Prefix("/v1.0".into())
    );
    assert_eq!(shape(r"^/a\$$"), PathShape::Exact("/a$".into()));
    assert_eq!(shape("^/a.*"), PathShape::Unknown);
    assert_eq!(shape(r"^/a\d$"), PathShape::Unknown);
    assert_eq!(shape("/a$"), PathShape::Unknown);
    assert_eq!(PathShape::of(None), PathShape::All);
    let prefix = PathShape::Prefix("/api".into());
    assert!(prefix.covers(&PathShape::Exact("/api".into())));
    assert!(prefix.covers(&PathShape::Exact("/api/x".into())));
    assert!(prefix.covers(&PathShape::Prefix("/api/v1".into())));
    assert!(!prefix.covers(&PathShape::Exact("/apix".into())));
    assert!(!prefix.covers(&PathShape::All));
    assert!(!prefix.covers(&PathShape::Unknown));
}

use rstest::rstest;

use super::*;

#[rstest]
#[case::prefix_tail("^/api(?s:/.*)?$")]
#[case::exact(r"^/v1\.0$")]
#[case::extension(r"^/img/.*\.png")]
#[case::case_insensitive("(?i)^/Docs")]
#[case::named_group("^/(?P<id>[0-9]+)$")]
#[case::ascii_class("^/[[:alpha:]]+$")]
#[case::perl_class(r"^/\d+/\w*$")]
#[case::category(r"^/\pL+/\p{Nd}$")]
#[case::thousand("^/x{1000}$")]
#[case::nested_product_of_1000("^/(a{10}){100}$")]
#[case::escaped_punctuation(r"^/a\-b\%c$")]
#[case::hex_escape(r"^/\x{41}$")]
#[case::word_boundary(r"\bapi\b")]
fn go_accepts(#[case] pattern: &str) {
    assert_eq!(check_go_regex(pattern), Ok(()));
}

#[rstest]
#[case::lookahead("/api/(?!internal)", "does not compile")]
#[case::unbalanced("/(a|b", "does not compile")]
#[case::backreference(r"/\1", "does not compile")]
#[case::over_1000("/x{1001}", "over 1000")]
#[case::range_over_1000("/x{2,1001}", "over 1000")]
#[case::nested_over_1000("/(a{100}){11}", "nested repetitions")]
#[case::repeated_repetition("/a{2}{3}", "repetition of a repetition")]
#[case::verbose_flag("(?x)/a b", "no flag x")]
#[case::unicode_flag("(?u)/a", "no flag u")]
#[case::crlf_flag("(?R)/a$", "no flag R")]
#[case::unicode_escape(r"/\u0041", "no \\u")]
#[case::set_intersection("/[a-z&&[^aeiou]]", "class set operations")]
#[case::nested_class("/[a[bc]]", "nested class")]
#[case::angle_boundary(r"\<api", "word-boundary")]
#[case::property("/\\p{Greek}", "general categories")]
#[case::property_value("/\\p{Script=Greek}", "name=value")]
fn go_refuses(#[case] pattern: &str, #[case] why: &str) {
    let error = check_go_regex(pattern).unwrap_err();
    assert!(error.contains(why), "{pattern}: {error}");
}

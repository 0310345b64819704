//! Whether cloudflared will compile a rule's path: cloudflared compiles
//! every rule with Go's `regexp` (RE2 syntax) and refuses the whole
//! configuration if one fails, so one bad pattern from one source would
//! stop every other source's updates. The pattern is parsed with
//! `regex-syntax`, whose syntax is close to Go's, and what the two read
//! differently is refused here:
//!
//! - Go's limits: a counted repetition over 1000, or nested counted
//!   repetitions whose product is over 1000 (`(a{100}){11}`), and a
//!   repetition of a repetition (`a{2}{3}`, `a**`);
//! - what Go does not have: the flags `x`, `u` and `R`, `\u`/`\U` escapes,
//!   octal escapes, class set operations (`[a-z&&[^aeiou]]`) and nested
//!   classes, the word-boundary forms `\<`, `\>` and `\b{start}`, and
//!   Unicode properties beyond the general categories (`\p{L}`, `\pN`…);
//! - what neither has fails to parse: look-around (`(?!x)`), back-references
//!   (`\1`), unbalanced groups.
//!
//! Refusing a pattern Go would accept costs that one source; accepting one
//! Go refuses costs the whole tunnel, so where in doubt this refuses.

use regex_syntax::ast::{
    self, AssertionKind, Ast, ClassSet, ClassSetItem, ClassUnicodeKind, Flag, FlagsItemKind,
    GroupKind, HexLiteralKind, LiteralKind, RepetitionKind, RepetitionRange,
};

/// Go's `maxRepeat`: the largest count of one repetition, and of nested ones
/// multiplied.
const MAX_REPEAT: u32 = 1000;

/// The general categories Go's `unicode.Categories` names, and `Any`.
const GO_CATEGORIES: &[&str] = &[
    "Any", "C", "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn",
    "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk", "Sm",
    "So", "Z", "Zl", "Zp", "Zs",
];

/// `Ok` when Go's `regexp.Compile` accepts `pattern` and reads it as
/// `regex-syntax` does; otherwise why not, short enough for a condition.
pub fn check_go_regex(pattern: &str) -> Result<(), String> {
    let ast = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|error| format!("does not compile: {}", error.kind()))?;
    check(&ast, MAX_REPEAT)
}

/// `budget`: how many times the enclosing counted repetitions may still
/// multiply what is inside (Go's `repeatIsValid`).
fn check(ast: &Ast, budget: u32) -> Result<(), String> {
    match ast {
        Ast::Empty(_) | Ast::Dot(_) | Ast::ClassPerl(_) => Ok(()),
        Ast::Literal(literal) => check_literal(literal),
        Ast::Flags(flags) => check_flags(&flags.flags),
        Ast::Assertion(assertion) => match assertion.kind {
            AssertionKind::StartLine
            | AssertionKind::EndLine
            | AssertionKind::StartText
            | AssertionKind::EndText
            | AssertionKind::WordBoundary
            | AssertionKind::NotWordBoundary => Ok(()),
            _ => Err("Go has no word-boundary forms other than \\b and \\B".into()),
        },
        Ast::ClassUnicode(class) => check_unicode(class),
        Ast::ClassBracketed(class) => check_class(&class.kind),
        Ast::Repetition(repetition) => {
            if let Ast::Repetition(_) = *repetition.ast {
                return Err("Go refuses a repetition of a repetition; use a group".into());
            }
            let budget = match &repetition.op.kind {
                RepetitionKind::Range(range) => counted(range, budget)?,
                _ => budget,
            };
            check(&repetition.ast, budget)
        }
        Ast::Group(group) => {
            if let GroupKind::NonCapturing(flags) = &group.kind {
                check_flags(flags)?;
            }
            check(&group.ast, budget)
        }
        Ast::Alternation(alternation) => alternation.asts.iter().try_for_each(|a| check(a, budget)),
        Ast::Concat(concat) => concat.asts.iter().try_for_each(|a| check(a, budget)),
    }
}

/// What is left of `budget` inside a counted repetition.
fn counted(range: &RepetitionRange, budget: u32) -> Result<u32, String> {
    let (min, max) = match *range {
        RepetitionRange::Exactly(n) => (n, Some(n)),
        RepetitionRange::AtLeast(n) => (n, None),
        RepetitionRange::Bounded(m, n) => (m, Some(n)),
    };
    if min > MAX_REPEAT || max.is_some_and(|max| max > MAX_REPEAT) {
        return Err(format!("Go refuses a repetition count over {MAX_REPEAT}"));
    }
    // As Go counts: the upper bound, or the lower one when there is none.
    let count = max.unwrap_or(min);
    if count == 0 {
        return Ok(budget);
    }
    if count > budget {
        return Err(format!(
            "Go refuses nested repetitions of more than {MAX_REPEAT} in all"
        ));
    }
    Ok(budget / count)
}

fn check_literal(literal: &ast::Literal) -> Result<(), String> {
    match literal.kind {
        LiteralKind::HexFixed(HexLiteralKind::UnicodeShort | HexLiteralKind::UnicodeLong) => {
            Err("Go has no \\u or \\U escapes; use \\x{...}".into())
        }
        LiteralKind::Octal => Err("octal escapes are not accepted; use \\x{...}".into()),
        _ => Ok(()),
    }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let FlagsItemKind::Flag(flag @ (Flag::Unicode | Flag::CRLF | Flag::IgnoreWhitespace)) =
            item.kind
        {
            let letter = match flag {
                Flag::Unicode => 'u',
                Flag::CRLF => 'R',
                _ => 'x',
            };
            return Err(format!(
                "Go has no flag {letter}; its flags are i, m, s and U"
            ));
        }
    }
    Ok(())
}

fn check_unicode(class: &ast::ClassUnicode) -> Result<(), String> {
    let name = match &class.kind {
        ClassUnicodeKind::OneLetter(letter) => letter.to_string(),
        ClassUnicodeKind::Named(name) => name.clone(),
        ClassUnicodeKind::NamedValue { .. } => {
            return Err("Go has no \\p{name=value} classes".into());
        }
    };
    if GO_CATEGORIES.contains(&name.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "\\p{{{name}}} is not accepted: only general categories such as \\p{{L}} are"
        ))
    }
}

fn check_class(set: &ClassSet) -> Result<(), String> {
    let ClassSet::Item(item) = set else {
        return Err("Go has no class set operations (&&, --, ~~)".into());
    };
    let items = match item {
        ClassSetItem::Union(union) => union.items.as_slice(),
        item => std::slice::from_ref(item),
    };
    for item in items {
        match item {
            ClassSetItem::Bracketed(_) => {
                return Err("Go reads a [ inside a class as itself, not as a nested class".into());
            }
            ClassSetItem::Literal(literal) => check_literal(literal)?,
            ClassSetItem::Range(range) => {
                check_literal(&range.start)?;
                check_literal(&range.end)?;
            }
            ClassSetItem::Unicode(class) => check_unicode(class)?,
            ClassSetItem::Union(union) => {
                for item in &union.items {
                    check_class(&ClassSet::Item(item.clone()))?;
                }
            }
            ClassSetItem::Empty(_) | ClassSetItem::Ascii(_) | ClassSetItem::Perl(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! A YAML document as a tree whose every node knows where it was written.
//!
//! serde stops at the first error and forgets positions; validation wants
//! every error at once, each with `line:col`. So the pipeline is first read
//! into this small tree (scalars, sequences, mappings, each with a [`Span`])
//! from yaml-rust2's marked events, and the typed model is built from it.

use crate::Span;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One node of the document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar with its text; `quoted` scalars are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order. Duplicate keys are reported while
    /// building, and only the first is kept.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar's text, if this is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for `~`, `null` and an empty plain value (`key:`).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, quoted: false } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for messages: "a mapping", "a list", "a string".
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "empty",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error or a duplicate key found while building the tree.
#[derive(Debug, Clone)]
pub(crate) struct TreeError {
    pub message: String,
    pub span: Span,
    pub hint: Option<String>,
}

/// Maps yaml-rust2's character indices to byte offsets.
struct Offsets<'a> {
    src: &'a str,
    /// Byte offset of every char, present only when the text is not ASCII.
    table: Option<Vec<usize>>,
}

impl<'a> Offsets<'a> {
    fn new(src: &'a str) -> Self {
        let table = (!src.is_ascii()).then(|| src.char_indices().map(|(i, _)| i).collect());
        Self { src, table }
    }

    fn span(&self, mark: &Marker) -> Span {
        let start = match &self.table {
            None => mark.index().min(self.src.len()),
            Some(t) => t.get(mark.index()).copied().unwrap_or(self.src.len()),
        };
        Span { start, end: start, line: mark.line(), col: mark.col() + 1 }
    }

    /// Stretches a scalar's span over its text, not past the end of its
    /// line, so a diagnostic can underline the value.
    fn widen(&self, span: Span, text: &str, quoted: bool) -> Span {
        let line_end = self.src[span.start..].find('\n').map_or(self.src.len(), |i| span.start + i);
        let len = text.len() + if quoted { 2 } else { 0 };
        Span { end: (span.start + len).min(line_end).max(span.start), ..span }
    }
}

/// Builds [`Node`]s from the parser's event stream.
struct Builder<'a> {
    offsets: Offsets<'a>,
    /// Open collections: the node under construction and, for mappings, a
    /// key waiting for its value.
    stack: Vec<(Node, Option<Node>)>,
    anchors: Vec<(usize, Node)>,
    /// Anchor ids of the open collections, parallel to `stack`.
    open_anchors: Vec<usize>,
    root: Option<Node>,
    errors: Vec<TreeError>,
    documents: usize,
}

impl Builder<'_> {
    fn push_value(&mut self, node: Node) {
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    let duplicate = key.as_scalar().and_then(|k| {
                        entries.iter().find(|(other, _)| other.as_scalar() == Some(k)).map(|(other, _)| other.span)
                    });
                    match duplicate {
                        Some(first) => self.errors.push(TreeError {
                            message: format!("duplicate key `{}`", key.as_scalar().unwrap_or_default()),
                            span: key.span,
                            hint: Some(format!(
                                "the first `{}` is at line {}; keep one of them",
                                key.as_scalar().unwrap_or_default(),
                                first.line
                            )),
                        }),
                        None => entries.push((key, node)),
                    }
                }
            },
            Kind::Scalar { .. } => {}
        }
    }

    fn remember_anchor(&mut self, id: usize, node: &Node) {
        if id > 0 {
            self.anchors.push((id, node.clone()));
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let span = self.offsets.span(&mark);
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let span = self.offsets.widen(span, &text, quoted);
                let node = Node { kind: Kind::Scalar { text, quoted }, span };
                self.remember_anchor(anchor, &node);
                self.push_value(node);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((Node { kind: Kind::Seq(Vec::new()), span }, None));
                self.open_anchors.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((Node { kind: Kind::Map(Vec::new()), span }, None));
                self.open_anchors.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, _)), Some(anchor)) = (self.stack.pop(), self.open_anchors.pop()) {
                    self.remember_anchor(anchor, &node);
                    self.push_value(node);
                }
            }
            Event::Alias(id) => {
                let found = self.anchors.iter().rev().find(|(a, _)| *a == id).map(|(_, n)| n.clone());
                match found {
                    Some(mut node) => {
                        node.span = span;
                        self.push_value(node);
                    }
                    None => self.errors.push(TreeError {
                        message: "alias refers to an unknown anchor".into(),
                        span,
                        hint: None,
                    }),
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parses `src` into a tree. A syntax error ends parsing (YAML cannot be
/// read past it); duplicate keys are collected and parsing goes on.
pub(crate) fn parse(src: &str) -> (Option<Node>, Vec<TreeError>) {
    let mut builder = Builder {
        offsets: Offsets::new(src),
        stack: Vec::new(),
        anchors: Vec::new(),
        open_anchors: Vec::new(),
        root: None,
        errors: Vec::new(),
        documents: 0,
    };
    let mut parser = Parser::new_from_str(src);
    if let Err(e) = parser.load(&mut builder, true) {
        let span = builder.offsets.span(e.marker());
        builder.errors.push(TreeError {
            message: format!("invalid YAML: {}", e.info()),
            span,
            hint: Some("check the indentation and quoting around this line".into()),
        });
        return (None, builder.errors);
    }
    if builder.documents > 1 {
        builder.errors.push(TreeError {
            message: "a pipeline file holds one YAML document, this one has several".into(),
            span: Span::default(),
            hint: Some("remove the `---` separators or split the file".into()),
        });
    }
    (builder.root, builder.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let (root, errors) = parse("a: 1\nb:\n  - x\n  - y\n");
        assert!(errors.is_empty());
        let root = root.expect("document");
        let Kind::Map(entries) = &root.kind else { panic!("not a map") };
        assert_eq!(entries[1].0.span.line, 2);
        assert_eq!(entries[1].0.span.col, 1);
        let Kind::Seq(items) = &entries[1].1.kind else { panic!("not a seq") };
        assert_eq!((items[1].span.line, items[1].span.col), (4, 5));
        assert_eq!(&"a: 1\nb:\n  - x\n  - y\n"[items[1].span.start..][..1], "y");
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let (_, errors) = parse("a: 1\na: 2\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].span.line, 2);
    }

    #[test]
    fn non_ascii_offsets_are_bytes() {
        let src = "é: ü\nk: v\n";
        let (root, _) = parse(src);
        let Kind::Map(entries) = &root.expect("doc").kind else { panic!() };
        assert_eq!(&src[entries[1].1.span.start..][..1], "v");
    }
}

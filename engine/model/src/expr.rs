//! `${{ ... }}` expressions in step values.
//!
//! A value such as `"${{ inputs.render }}/site"` is a [`template`]: text
//! and expressions. The expressions are few and fixed:
//!
//! | expression            | becomes                                            |
//! |-----------------------|----------------------------------------------------|
//! | `params.NAME`         | the run's value of parameter `NAME`                |
//! | `inputs.NAME`         | the guest path where input `NAME` is mounted       |
//! | `workspace`           | the guest path of the step's workspace             |
//! | `run.id`              | the run's id                                       |
//! | `step.name`           | the step's name                                    |
//!
//! There is no code execution and no access to the engine's environment:
//! a value can only be built from what the pipeline and the run declared.

use crate::{GUEST_INPUTS, GUEST_WORKSPACE, ParamValue};
use indexmap::IndexMap;

/// One expression inside `${{ }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `params.NAME`
    Param(String),
    /// `inputs.NAME`
    Input(String),
    /// `workspace`
    Workspace,
    /// `run.id`
    RunId,
    /// `step.name`
    StepName,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as it is.
    Text(String),
    /// An expression, with its byte offset in the template.
    Expr(Expr, usize),
}

/// Splits `text` into literal text and expressions.
///
/// Errors carry the byte offset of the bad expression within `text`.
pub fn template(text: &str) -> Result<Vec<Segment>, (usize, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            out.push(Segment::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return Err((offset + start, "`${{` is not closed by `}}`".to_owned()));
        };
        let inner = after[..end].trim();
        out.push(Segment::Expr(parse_expr(inner).map_err(|e| (offset + start, e))?, offset + start));
        let consumed = start + 3 + end + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest.to_owned()));
    }
    Ok(out)
}

fn parse_expr(inner: &str) -> Result<Expr, String> {
    let valid_name = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match inner.split_once('.') {
        Some(("params", name)) if valid_name(name) => Ok(Expr::Param(name.to_owned())),
        Some(("inputs", name)) if valid_name(name) => Ok(Expr::Input(name.to_owned())),
        Some(("run", "id")) => Ok(Expr::RunId),
        Some(("step", "name")) => Ok(Expr::StepName),
        None if inner == "workspace" => Ok(Expr::Workspace),
        _ => Err(format!(
            "unknown expression `{inner}`; expressions are `params.NAME`, `inputs.NAME`, `workspace`, `run.id` and `step.name`"
        )),
    }
}

/// What expressions evaluate to for one step of one run.
pub struct ExprContext<'a> {
    /// The run's parameter values.
    pub params: &'a IndexMap<String, ParamValue>,
    /// The run's id.
    pub run_id: &'a str,
    /// The step's name.
    pub step: &'a str,
}

/// Evaluates a template that validation accepted.
///
/// An expression naming something unknown (which validation rules out)
/// is an error rather than an empty string, so nothing is silently lost.
pub fn render(text: &str, ctx: &ExprContext<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for segment in template(text).map_err(|(_, e)| e)? {
        match segment {
            Segment::Text(t) => out.push_str(&t),
            Segment::Expr(Expr::Param(name), _) => match ctx.params.get(&name) {
                Some(v) => out.push_str(&v.to_string()),
                None => return Err(format!("parameter `{name}` has no value")),
            },
            Segment::Expr(Expr::Input(name), _) => {
                out.push_str(GUEST_INPUTS);
                out.push('/');
                out.push_str(&name);
            }
            Segment::Expr(Expr::Workspace, _) => out.push_str(GUEST_WORKSPACE),
            Segment::Expr(Expr::RunId, _) => out.push_str(ctx.run_id),
            Segment::Expr(Expr::StepName, _) => out.push_str(ctx.step),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_expression() {
        let mut params = IndexMap::new();
        params.insert("title".to_owned(), ParamValue::String("Docs".into()));
        let ctx = ExprContext { params: &params, run_id: "r1", step: "pack" };
        let text = "${{ params.title }}|${{inputs.render}}/site|${{ workspace }}|${{ run.id }}|${{ step.name }}";
        assert_eq!(render(text, &ctx).as_deref(), Ok("Docs|/inputs/render/site|/workspace|r1|pack"));
    }

    #[test]
    fn reports_bad_expressions_with_offsets() {
        assert_eq!(template("ab ${{ env.HOME }}").map_err(|e| e.0), Err(3));
        assert!(template("${{ params.x").is_err());
        assert_eq!(template("plain").ok(), Some(vec![Segment::Text("plain".into())]));
    }
}

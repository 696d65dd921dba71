//! Renders a tree of Markdown pages to HTML.
//!
//! Parameters:
//! - `src` (required): directory holding `*.md` files, usually an input
//!   such as `${{ inputs.pages }}`.
//! - `out` (default `site`): directory in the workspace to write to.
//! - `title` (default `Site`): prefix of every page's `<title>`.
//!
//! `a/b.md` becomes `out/a/b.html`; other files (stylesheets, images) are
//! copied unchanged. Links to `x.md` are rewritten to `x.html`.

use airlock_plugin::{Context, Describe, Step, files_below};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};

struct Markdown;

impl Step for Markdown {
    fn run(ctx: Context) -> Result<(), String> {
        let src = ctx.resolve(ctx.require("src")?);
        let out = ctx.resolve(ctx.param("out").unwrap_or("site"));
        let title = ctx.param("title").unwrap_or("Site");
        let mut pages = 0;
        for rel in files_below(&src)? {
            let from = src.join(&rel);
            let is_md = rel.extension().is_some_and(|e| e == "md");
            let to = if is_md { out.join(&rel).with_extension("html") } else { out.join(&rel) };
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).describe(|| format!("cannot create {}", parent.display()))?;
            }
            if is_md {
                let text = std::fs::read_to_string(&from).describe(|| format!("cannot read {}", from.display()))?;
                let page = render(title, &text);
                std::fs::write(&to, page).describe(|| format!("cannot write {}", to.display()))?;
                println!("rendered {} -> {}", rel.display(), to.display());
                pages += 1;
            } else {
                std::fs::copy(&from, &to).describe(|| format!("cannot copy {}", from.display()))?;
            }
        }
        if pages == 0 {
            return Err(format!("no Markdown pages found under {}", src.display()));
        }
        println!("{pages} page(s) rendered");
        Ok(())
    }
}

/// Renders one page: the first heading becomes the page title.
fn render(site_title: &str, markdown: &str) -> String {
    let mut heading = None;
    let mut in_heading = false;
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|event| {
        match &event {
            Event::Start(Tag::Heading { .. }) if heading.is_none() => in_heading = true,
            Event::Text(t) if in_heading => {
                heading = Some(t.to_string());
                in_heading = false;
            }
            _ => {}
        }
        match event {
            Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                let dest_url = rewrite_link(dest_url);
                Event::Start(Tag::Link { link_type, dest_url, title, id })
            }
            other => other,
        }
    });
    let mut body = String::new();
    html::push_html(&mut body, parser);
    let page_title = match heading {
        Some(h) => format!("{} — {}", escape(&h), escape(site_title)),
        None => escape(site_title),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{page_title}</title>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
}

/// Relative links to Markdown pages point at the rendered HTML instead.
fn rewrite_link(dest: CowStr<'_>) -> CowStr<'_> {
    let is_relative = !dest.contains("://") && !dest.starts_with('/') && !dest.starts_with('#');
    match dest.split_once('#') {
        _ if !is_relative => dest,
        Some((path, frag)) if path.ends_with(".md") => format!("{}.html#{frag}", &path[..path.len() - 3]).into(),
        None if dest.ends_with(".md") => format!("{}.html", &dest[..dest.len() - 3]).into(),
        _ => dest,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

airlock_plugin::export!(Markdown);

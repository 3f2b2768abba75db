//! A [`Sheet`] as one standalone HTML page, the printed record of a review: the title, the
//! header block as a two-column table, the choices each column allows, then the rows. Like
//! the HTML report ([`crate::output::report`]) it has no script and no external resource,
//! and every string from the sheet is escaped ([`escape`]), since names and values come from
//! the directory and from reviewers; control characters, line breaks included, are written
//! out (`\u{a}`) as in the report, so that no cell reads differently from what it holds.

use crate::output::report::html::escape;

use super::Sheet;

/// Print-friendly and in the HTML report's style: fixed table layout and breaking long
/// words, because 64-hex ids would otherwise push pages sideways.
const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; padding: 16px 24px; max-width: 2400px; color: #111; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.6em; }
table { table-layout: fixed; width: 100%; border-collapse: separate; border-spacing: 0;
  margin: 0.5em 0 1.5em; border-top: 1px solid #888; border-left: 1px solid #888; }
th, td { border-right: 1px solid #888; border-bottom: 1px solid #888; padding: 4px 6px;
  text-align: left; vertical-align: top; overflow-wrap: anywhere; word-break: break-word; }
th { background: #e8e8e8; font-weight: 600; }
table.header { width: auto; max-width: 1200px; }
/* Many columns: a smaller type, and long ids broken anywhere rather than pushing the page. */
table.rows { font-size: 12px; }
table.header th { width: 14em; }
ul.choices { margin: 0 0 1em; padding-left: 1.2em; }
@page { size: A4 landscape; margin: 15mm 15mm 18mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 9pt; }
  table.rows { font-size: 7pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
}
"#;

/// The page for `sheet`.
pub fn write_html(sheet: &Sheet) -> String {
    let title = escape(&sheet.title);
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    if !sheet.header.is_empty() {
        page.push_str("<table class=\"header\">\n<tbody>\n");
        for (key, value) in &sheet.header {
            page.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>\n",
                escape(key),
                escape(value)
            ));
        }
        page.push_str("</tbody>\n</table>\n");
    }
    if !sheet.choices.is_empty() {
        page.push_str("<ul class=\"choices\">\n");
        for (column, values) in &sheet.choices {
            let values: Vec<String> = values.iter().map(|value| escape(value)).collect();
            page.push_str(&format!(
                "<li><strong>{}</strong>: one of {}, or empty</li>\n",
                escape(column),
                values.join(", ")
            ));
        }
        page.push_str("</ul>\n");
    }
    page.push_str("<table class=\"rows\">\n<thead>\n<tr>");
    for column in &sheet.columns {
        page.push_str(&format!("<th scope=\"col\">{}</th>", escape(column)));
    }
    page.push_str("</tr>\n</thead>\n<tbody>\n");
    for row in &sheet.rows {
        page.push_str("<tr>");
        for cell in row {
            page.push_str(&format!("<td>{}</td>", escape(cell)));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_is_escaped() {
        let sheet = Sheet {
            title: "review <b>".to_string(),
            header: vec![(
                "source".to_string(),
                "<script>alert(1)</script>".to_string(),
            )],
            columns: vec!["user\"name".to_string(), "decision".to_string()],
            rows: vec![vec![
                "<script>alert('x')</script>".to_string(),
                "a & b".to_string(),
            ]],
            choices: vec![("decision".to_string(), vec!["<keep>".to_string()])],
        };
        let page = write_html(&sheet);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<b>"));
        assert!(!page.contains("<keep>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("user&quot;name"));
        assert!(page.contains("a &amp; b"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
        assert!(page.contains("<thead>"));
        assert!(!page.contains("src=") && !page.contains("href="));
    }
}

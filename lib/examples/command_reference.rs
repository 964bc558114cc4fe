//! Prints the command reference generated from the command table, in the Markdown the
//! README embeds; `make readme` puts it there.

fn main() {
    print!("{}", tchlab::session::commands::reference_markdown());
}

//! Attribute macros of the Quiver plugin SDK: `#[filter]`, `#[transform]` and `#[init]`.
//!
//! Use them through the `quiver-plugin` crate (`#[quiver_plugin::filter]`, …), which
//! re-exports them: the code they generate calls `::quiver_plugin::__rt`.
//!
//! Each attribute re-emits the function it is put on unchanged and adds the WebAssembly export
//! that calls it (`quiver_filter`, `quiver_transform` or `quiver_init`, see docs/PLUGINS.md).
//! The export is `#[no_mangle]` only when compiling for `wasm32`; on other targets it is an
//! ordinary hidden function, so a plugin crate also builds natively for its unit tests.
//!
//! This crate has no dependencies: the function's name is found by scanning the item's tokens
//! for `fn` followed by an identifier.

use proc_macro::{Delimiter, TokenStream, TokenTree};

/// Marks `fn name(msg: &Message) -> bool` as the plugin's filter and exports `quiver_filter`.
///
/// The function is called once per message of a batch; `true` keeps the message.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("filter", "quiver_filter", "run_filter", attr, item)
}

/// Marks the plugin's transform and exports `quiver_transform`.
///
/// The function takes a `Message<'_>` and returns any `TransformResult`: an
/// `Option<Message<'_>>` (`None` drops the message), a `Result<Option<Message<'_>>, Reject>`,
/// a `Result<Message<'_>, Reject>`, a `Message<'_>` or an `Outcome<'_>`.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("transform", "quiver_transform", "run_transform", attr, item)
}

/// Marks `fn name(config: &Config) -> Result<(), String>` as the plugin's initialisation and
/// exports `quiver_init`.
///
/// It is called once per instance with the plugin's configuration, before any batch; an `Err`
/// refuses the configuration (the reason is logged) and the broker fails the plugin's load.
#[proc_macro_attribute]
pub fn init(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("init", "quiver_init", "run_init", attr, item)
}

fn expand(
    attr_name: &str,
    export: &str,
    runner: &str,
    attr: TokenStream,
    item: TokenStream,
) -> TokenStream {
    if !attr.is_empty() {
        return compile_error(&format!("#[quiver_plugin::{attr_name}] takes no arguments"));
    }
    let Some(name) = fn_name(&item) else {
        return compile_error(&format!(
            "#[quiver_plugin::{attr_name}] must be put on a function"
        ));
    };
    let wrapper = match runner {
        "run_transform" => format!(
            "::quiver_plugin::__rt::run_transform(len, |message| \
             ::quiver_plugin::TransformResult::into_outcome({name}(message)))"
        ),
        _ => format!("::quiver_plugin::__rt::{runner}(len, {name})"),
    };
    let generated = format!(
        "#[doc(hidden)]\n\
         #[allow(dead_code)]\n\
         #[cfg_attr(target_arch = \"wasm32\", unsafe(no_mangle))]\n\
         pub extern \"C\" fn {export}(len: i32) -> i32 {{\n    {wrapper}\n}}\n"
    );
    let generated: TokenStream = match generated.parse() {
        Ok(tokens) => tokens,
        Err(e) => return compile_error(&format!("quiver-plugin-macros: internal error: {e}")),
    };
    let mut out = item;
    out.extend(generated);
    out
}

/// The identifier after the first top-level `fn` keyword of `item`.
fn fn_name(item: &TokenStream) -> Option<String> {
    let mut after_fn = false;
    for token in item.clone() {
        match token {
            TokenTree::Ident(ident) => {
                let text = ident.to_string();
                if after_fn {
                    return Some(text);
                }
                after_fn = text == "fn";
            }
            // The parameter list or the body: the name comes before them.
            TokenTree::Group(group) if after_fn || group.delimiter() == Delimiter::Brace => {
                return None;
            }
            _ => after_fn = false,
        }
    }
    None
}

fn compile_error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});")
        .parse()
        .expect("a compile_error! invocation parses")
}

//! Plots and text on images (plotters' bitmap backend with an embedded DejaVu Sans, so no
//! system fonts are needed).

use std::sync::Once;

/// Registers DejaVu Sans as plotters' "sans-serif" font. Call before drawing any text.
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and valid, so registration cannot fail on user input.
        if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, dejavu::sans::regular())
            .is_err()
        {
            panic!("embedded DejaVu Sans failed to register");
        }
    });
}

"""CSS, keyboard-shortcut JS and the shortcut legend for the studio (kept apart from the layout)."""

CSS = """
#topbar { align-items: center; margin-bottom: 4px; }
#brand { font-size: 1.35rem; display: flex; align-items: baseline; gap: .5rem; padding: 6px 2px; }
#brand .logo { color: var(--color-accent); font-size: 1.6rem; }
#brand .tagline { color: var(--body-text-color-subdued); font-size: .9rem; margin-left: .4rem; }
.muted { color: var(--body-text-color-subdued); font-size: .9em; }
#status { min-height: 2.2em; padding: 6px 10px; border-radius: 8px; background: var(--background-fill-secondary); }
.history-tree .wrap { flex-direction: column; align-items: stretch; gap: 2px; }
.history-tree label { font-size: .88em; padding: 3px 8px !important; }
#crumbs { font-size: .9em; color: var(--body-text-color-subdued); }
/* Edits are small images: show their exact pixels, scaled up, instead of a blurry upscale. */
.cands img, #edit-slider img, #review-slider img, #edit-heatmap img, #review-heatmap img,
#edit-pair-a img, #edit-pair-b img, #review-pair-a img, #review-pair-b img { image-rendering: pixelated; }
.cands .caption-label { font-size: .8em; }
/* Gallery reserves 450px by default; candidates are one or two rows of thumbnails. */
.cands .fixed-height { min-height: 0 !important; max-height: 460px; }
/* Always four columns: one candidate would otherwise fill the row as a square taller than the frame. */
.cands .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
/* Scale small model outputs up to the frame (pixelated above), instead of a stamp in the middle. */
#edit-heatmap img, #review-heatmap img, #edit-pair-a img, #edit-pair-b img, #review-pair-a img,
#review-pair-b img { width: 100%; height: 100%; object-fit: contain; }
.cand-bar { align-items: center; }
.cand-info { font-size: .92em; flex: 1 1 320px !important; min-width: 320px !important; }
.rate-box, .pair-box { padding: 6px; margin-top: 6px; }
.rate-row { align-items: center; gap: 6px; flex-wrap: wrap; }
.rate-label { font-weight: 600; padding: 0 6px; white-space: nowrap; }
/* the label's block takes the width of its text, so the buttons beside it never cover it */
.rate-row > .block:has(.rate-label) { flex: 0 0 5.5em !important; min-width: 5.5em !important; }
.star-btn { color: #d08a00 !important; letter-spacing: -1px; }
.rate-btn.flash { outline: 2px solid var(--color-accent); }
.rate-msg { min-height: 1.6em; font-size: .92em; }
#shortcuts { font-size: .85em; color: var(--body-text-color-subdued); text-align: center; margin-top: 8px; }
kbd { border: 1px solid var(--border-color-primary); border-bottom-width: 2px; border-radius: 4px;
      padding: 0 5px; font-size: .85em; background: var(--background-fill-secondary); }
"""

HEAD = '<meta name="color-scheme" content="light dark">'

# Keys → buttons (by CSS class, first visible one, so the same keys work in the Edit and Review tabs).
# Ignored while typing in a text field.
SHORTCUTS_JS = """
() => {
  const map = { '1': 'kb-star-1', '2': 'kb-star-2', '3': 'kb-star-3', '4': 'kb-star-4', '5': 'kb-star-5',
                'u': 'kb-up', '+': 'kb-up', 'd': 'kb-down', '-': 'kb-down', 'w': 'kb-best',
                'a': 'kb-a', 'b': 'kb-b', 't': 'kb-tie', 'x': 'kb-bad', 'n': 'kb-next' };
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
    const cls = map[e.key.toLowerCase()];
    if (!cls) return;
    const btn = [...document.querySelectorAll('.' + cls)].find((el) => el.offsetParent !== null);
    if (!btn || btn.disabled) return;
    e.preventDefault();
    btn.click();
    btn.classList.add('flash');
    setTimeout(() => btn.classList.remove('flash'), 250);
  });
}
"""

SHORTCUTS_HELP = (
    "Keys (outside text boxes): <kbd>1</kbd>–<kbd>5</kbd> stars · <kbd>U</kbd>/<kbd>D</kbd> thumbs up/down · "
    "<kbd>W</kbd> best of all · <kbd>A</kbd>/<kbd>B</kbd> better of the pair · <kbd>T</kbd> tie · "
    "<kbd>X</kbd> both bad · <kbd>N</kbd> another pair · <kbd>Enter</kbd> in the instruction runs the edit"
)

// MathJax configuration for pymdownx.arithmatex (generic mode). MathJax itself comes with the
// site (tools/docs/vendor_mathjax.py puts it under assets/vendor/mathjax/) and loads after this.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  startup: {
    // Typeset from here only, one pass at a time: the page once it is loaded, and again after
    // each page change of mkdocs-material's instant navigation. With MathJax's own startup pass
    // as well, the two passes raced, and a formula whose TeX extension (\boldsymbol) was still
    // loading came out as red, undefined macros.
    typeset: false,
    ready() {
      MathJax.startup.defaultReady();
      const typeset = () => {
        MathJax.startup.promise = MathJax.startup.promise.then(() => {
          MathJax.startup.output.clearCache();
          MathJax.typesetClear();
          MathJax.texReset();
          return MathJax.typesetPromise();
        });
      };
      if (typeof document$ !== "undefined") {
        document$.subscribe(typeset);
      } else {
        typeset();
      }
    },
  },
};

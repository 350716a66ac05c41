// Small runtime fixes for the static book, loaded on every page before require.js and MathJax.
(function () {
  // 1. The ipywidgets html-manager finds its icon fonts relative to its require.js module path,
  //    which by default resolves next to the page. Map that path to the copy served from _static
  //    (a global `require` object defined before require.js loads is its configuration).
  var here = document.currentScript && document.currentScript.src;
  if (here && typeof window.require === "undefined") {
    var managerDir = new URL("html-manager", here).href;
    window.require = {paths: {"@jupyter-widgets/html-manager/dist": managerDir}};
    window.__jupyter_widgets_assets_path__ = managerDir + "/";
  }

  // 2. ipywidgets 8 typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue), which
  //    MathJax 3 no longer has. Give every MathJax object, including the one MathJax 3 creates
  //    when it loads, a Hub.Queue that forwards to MathJax 3's typesetPromise.
  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        var element = Array.isArray(job) ? job[2] : null;
        if (element && window.MathJax && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise([element]);
        }
      }
    },
  };
  var current = window.MathJax;
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) {
      Object.defineProperty(value, "Hub", {value: hub, enumerable: false, configurable: true});
    }
    return value;
  }
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
  withHub(current);
})();

// Upload Firmware form: checks what the browser can check, sends the files with XMLHttpRequest so a
// progress bar can follow the upload (fetch() reports no upload progress), shows the server's problem
// JSON beside the field it names, and after a successful upload goes where the answer's Location says
// (the firmware list, with the server's flash). Without JavaScript the form still posts normally.
(function () {
  "use strict";
  // The server's rule (semver 2.0, optional leading v), mirrored for instant feedback.
  var VERSION_RE = /^[vV]?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-((0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$/;
  var FIELDS = ["form", "version", "model", "bin", "ufw", "bin_sig", "ufw_sig", "security_version", "notes"];
  var MAX_SECURITY_VERSION = 4294967295;

  function byId(id) { return document.getElementById(id); }

  function showError(field, message) {
    var target = FIELDS.indexOf(field) >= 0 ? field : "form";
    var p = byId(target + "-error");
    p.textContent = message;
    p.hidden = false;
    var input = byId(target);
    if (input) { input.setAttribute("aria-invalid", "true"); }
  }

  function clearErrors() {
    FIELDS.forEach(function (field) {
      var p = byId(field + "-error");
      if (p) { p.textContent = ""; p.hidden = true; }
      var input = byId(field);
      if (input) { input.removeAttribute("aria-invalid"); }
    });
  }

  function fileName(input) { return input.files.length ? input.files[0].name : ""; }

  function check(form) {
    var errors = {};
    var version = form.version.value.trim();
    if (!version) { errors.version = "Enter a version, e.g. v1.0.1."; }
    else if (!VERSION_RE.test(version)) {
      errors.version = "\u201c" + version + "\u201d is not a semantic version like v1.0.1 or v2.0.0-rc.1.";
    }
    if (!form.model.value) { errors.model = "Choose the device model."; }
    var max = Number(form.dataset.maxBytes);
    ["bin", "ufw"].forEach(function (kind) {
      var input = form[kind];
      var name = fileName(input);
      if (!name) { return; }
      if (!name.toLowerCase().endsWith("." + kind)) { errors[kind] = "Choose a ." + kind + " file (got " + name + ")."; }
      else if (input.files[0].size === 0) { errors[kind] = "The ." + kind + " file is empty."; }
      else if (max && input.files[0].size > max) {
        errors[kind] = "The ." + kind + " file is larger than the server accepts (" + Math.floor(max / 1048576) + " MiB).";
      }
    });
    if (!fileName(form.bin) && !fileName(form.ufw)) { errors.bin = "Choose a .bin file, a .ufw file, or both."; }
    ["bin", "ufw"].forEach(function (kind) {
      if (fileName(form[kind + "_sig"]) && !fileName(form[kind])) {
        errors[kind + "_sig"] = "This is the ." + kind + " file's signature: choose the ." + kind + " file too.";
      }
    });
    var sv = form.security_version.value.trim();
    if (sv && !(/^\d+$/.test(sv) && Number(sv) <= MAX_SECURITY_VERSION)) {
      errors.security_version = "A whole number from 0 to " + MAX_SECURITY_VERSION + ".";
    }
    return errors;
  }

  function send(form) {
    var button = byId("upload-button");
    var bar = byId("upload-progress");
    var percent = byId("upload-percent");
    var status = byId("upload-status");
    var data = new FormData(form);
    data.delete("csrf_token"); // it travels in the header
    if (!form.draft.checked) { data.delete("draft"); }
    ["bin", "ufw", "bin_sig", "ufw_sig"].forEach(function (kind) { if (!fileName(form[kind])) { data.delete(kind); } });
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRF-Token", form.csrf_token.value);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) { return; }
      var p = Math.round((e.loaded / e.total) * 100);
      bar.value = p;
      percent.textContent = p + " %";
    });
    xhr.addEventListener("load", function () {
      button.disabled = false;
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status === 201 && body) {
        // The server has set the flash ("Uploaded v1.2.0 for Bota Pin (60.0 MB).") that the firmware list
        // shows; its address comes in Location.
        window.location.assign(xhr.getResponseHeader("Location") || "/firmware#release-" + body.id);
        return;
      }
      status.hidden = true;
      if (!body) { showError("form", "The server answered " + xhr.status + "; your session may have expired. Reload the page."); return; }
      var shown = false;
      (body.errors || []).forEach(function (e) { if (e.field) { showError(e.field, e.message); shown = true; } });
      if (!shown) { showError("form", body.detail || body.title || ("Upload failed (" + xhr.status + ").")); }
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      status.hidden = true;
      showError("form", "The connection failed during the upload. Nothing was saved; try again.");
    });
    bar.value = 0;
    percent.textContent = "0 %";
    status.hidden = false;
    button.disabled = true;
    xhr.send(data);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = byId("upload-form");
    if (!form) { return; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors();
      var errors = check(form);
      var fields = Object.keys(errors);
      if (fields.length) {
        fields.forEach(function (f) { showError(f, errors[f]); });
        byId(fields[0]).focus();
        return;
      }
      send(form);
    });
  });
})();

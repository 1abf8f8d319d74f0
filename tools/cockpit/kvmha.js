/* cockpit-kvmha: the cluster's data centres, hosts and guests, its recent events and its
 * plan, with actions; everything comes from the kvmha CLI run through cockpit.spawn with
 * --json on the host that serves the page (the cluster state is replicated, so any host
 * shows the whole cluster). The page never decides what the cluster did: it shows what
 * the CLI reports, and the CLI's own error text when it refuses.
 *
 * Stable attributes for tests and automation:
 *   [data-host=NAME][data-state=online|standby|offline|unclean|fenced|unknown]  a host
 *   [data-guest=NAME][data-host=HOST or ""][data-state=running|stopped|failed|migrating|…]
 *   #kv-dialog-result[data-result=ok|error]  the outcome of the last action
 *   #kv-progress[data-progress=PERCENT]       migration progress as the CLI reports it
 */
(function () {
    "use strict";

    var STATUS_MS = 2000; // a power cut shows within a poll or two of the cluster noticing
    var EVENTS_MS = 5000;
    var PLAN_MS = 20000;
    var SPAWN = { superuser: "try", err: "message" };

    var HOST_LABELS = {
        online: "online", standby: "standby", offline: "offline", unclean: "unclean (not fenced yet)",
        fenced: "fenced", unknown: "unknown"
    };
    var GUEST_LABELS = {
        running: "running", stopped: "stopped", failed: "failed", migrating: "migrating",
        unknown: "unknown", starting: "starting", stopping: "stopping"
    };

    var state = {
        status: null, // the last `kvmha status --json`
        statusAt: 0,
        events: [], // from `kvmha events --json`
        observed: [], // transitions this page saw between two polls
        busy: {}, // guest -> "migrating" while an action from this page runs
        caps: null, // which commands this kvmha has
        json: {} // "guest migrate" -> true when that command takes --json
    };

    /* ---- small DOM helpers ---------------------------------------------------------- */
    function el(tag, attrs) {
        var node = document.createElement(tag);
        var key;
        for (key in attrs || {}) {
            if (!Object.prototype.hasOwnProperty.call(attrs, key)) continue;
            var v = attrs[key];
            if (v === undefined || v === null) continue;
            if (key === "text") node.textContent = v;
            else if (key === "class") node.className = v;
            else if (key === "onclick") node.addEventListener("click", v);
            else node.setAttribute(key, v);
        }
        for (var i = 2; i < arguments.length; i++) {
            var c = arguments[i];
            if (c === null || c === undefined) continue;
            node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
        }
        return node;
    }

    function $(id) {
        return document.getElementById(id);
    }

    function show(node, on) {
        node.classList.toggle("kv-hidden", !on);
    }

    function clear(node) {
        while (node.firstChild) node.removeChild(node.firstChild);
        return node;
    }

    /* A state badge: a shape, a colour and the word, so it reads without colour too. */
    function badge(kind, value, labels) {
        return el("span", { class: "kv-badge kv-" + kind + "-" + value, title: labels[value] || value },
                  el("span", { class: "kv-shape", "aria-hidden": "true" }),
                  el("span", { class: "kv-word", text: labels[value] || value }));
    }

    /* ---- running the CLI -------------------------------------------------------------- */
    /* Resolves with stdout; rejects with {message, exit} where message is the CLI's own
     * error text (its stderr, or the message and fix of a JSON error object). */
    function kvmha(args, onChunk, merged) {
        return new Promise(function (resolve, reject) {
            var out = "";
            // merged: stderr into the same stream, for commands whose progress goes there
            // (`kvmha guest migrate --json` prints progress on stderr, the result on stdout)
            var opts = merged ? { superuser: SPAWN.superuser, err: "out" } : SPAWN;
            var proc = cockpit.spawn(["kvmha"].concat(args), opts);
            proc.stream(function (chunk) {
                out += chunk;
                if (onChunk) onChunk(chunk, out);
            });
            proc.done(function () { resolve(out) });
            proc.fail(function (ex) { reject({ message: errorText(ex, out), exit: ex.exit_status }) });
        });
    }

    function errorText(ex, out) {
        var doc = parseJson(out);
        if (doc && doc.error) {
            var e = doc.error;
            if (typeof e === "string") return e;
            return "kvmha: error: " + e.message + (e.fix ? "\nkvmha: fix: " + e.fix : "");
        }
        if (ex.problem === "not-found") return "the kvmha command is not installed on this host";
        var said = (out || "").split("\n").filter(function (l) { return /^kvmha: /.test(l) });
        if (said.length) return said.join("\n");
        var text = (ex.message || "").trim();
        if (!text && ex.problem) text = "cockpit: " + ex.problem;
        if (!text) text = "kvmha exited with code " + ex.exit_status;
        return text;
    }

    /* The JSON document in a command's output (pretty-printed or one line, possibly after
     * progress lines). */
    function parseJson(text) {
        if (!text) return null;
        try {
            return JSON.parse(text);
        } catch (_e) {
            var at = text.search(/^[{[]/m);
            if (at < 0) return null;
            try {
                return JSON.parse(text.slice(at));
            } catch (_e2) {
                return null;
            }
        }
    }

    /* Command names from click's help text ("Commands:" and two-space indented names). */
    function helpCommands(text) {
        var names = [];
        var inCommands = false;
        text.split("\n").forEach(function (line) {
            if (/^\s*commands:?\s*$/i.test(line)) {
                inCommands = true;
                return;
            }
            if (inCommands) {
                var m = /^\s{1,8}([a-z][a-z0-9-]*)(\s|$)/.exec(line);
                if (m) names.push(m[1]);
                else if (/^\S/.test(line)) inCommands = false;
            }
        });
        return names;
    }

    function discover() {
        var caps = { commands: [], host: [], ha: [] };
        return kvmha(["--help"])
                .then(function (out) {
                    caps.commands = helpCommands(out);
                    var subs = ["host", "ha"].filter(function (c) { return caps.commands.indexOf(c) >= 0 });
                    return Promise.all(subs.map(function (c) {
                        return kvmha([c, "--help"]).then(function (o) { caps[c] = helpCommands(o) },
                                                         function () {});
                    }));
                })
                .catch(function (err) { showError("kvmha --help failed: " + err.message) })
                .then(function () {
                    state.caps = caps;
                    return caps;
                });
    }

    function has(group, verb) {
        var caps = state.caps;
        if (!caps) return false;
        if (!verb) return caps.commands.indexOf(group) >= 0;
        return (caps[group] || []).indexOf(verb) >= 0;
    }

    /* argv for an action, with --json when that command takes it (checked in its help). */
    function actionArgv(args) {
        var key = args.slice(0, 2).join(" ");
        var known = state.json[key];
        var check = known === undefined
            ? kvmha(args.slice(0, 2).concat(["--help"])).then(function (o) { return /--json\b/.test(o) },
                                                              function () { return false })
            : Promise.resolve(known);
        return check.then(function (yes) {
            state.json[key] = yes;
            return yes ? args.concat(["--json"]) : args;
        });
    }

    /* ---- status ----------------------------------------------------------------------- */
    function pollStatus() {
        kvmha(["status", "--json"])
                .then(function (out) {
                    var rep = parseJson(out);
                    if (!rep || !rep.hosts) throw { message: "kvmha status --json gave no report" };
                    observe(state.status, rep);
                    state.status = rep;
                    state.statusAt = Date.now();
                    showError(null);
                    render();
                })
                .catch(function (err) {
                    showError("kvmha status failed: " + err.message);
                    renderUpdated();
                })
                .then(function () { window.setTimeout(pollStatus, STATUS_MS) });
    }

    /* What changed since the last poll, as events "seen by this console". */
    function observe(before, after) {
        if (!before) return;
        var now = Date.now() / 1000;
        var old = {};
        before.hosts.forEach(function (h) { old["h:" + h.name] = h.state });
        before.guests.forEach(function (g) { old["g:" + g.name] = g.state + "@" + (g.host || "") });
        after.hosts.forEach(function (h) {
            var was = old["h:" + h.name];
            if (was && was !== h.state)
                note(now, "host-" + h.state, h.name + ": " + was + " → " + h.state, h.name, null);
        });
        after.guests.forEach(function (g) {
            var was = old["g:" + g.name];
            var is = g.state + "@" + (g.host || "");
            if (was && was !== is) {
                var where = g.host ? " on " + g.host : "";
                var from = was.split("@")[1];
                note(now, "guest-" + g.state, g.name + ": " + g.state + where +
                     (from && from !== g.host ? " (was on " + from + ")" : ""), g.host, g.name);
            }
        });
    }

    function note(epoch, kind, message, host, guest) {
        state.observed.unshift({ epoch: epoch, kind: kind, message: message, host: host,
                                 guest: guest, source: "console" });
        state.observed = state.observed.slice(0, 50);
        renderEvents();
    }

    function showError(text) {
        var box = $("kv-error");
        clear(box);
        if (text) {
            box.appendChild(el("p", { class: "pf-c-alert__title kv-pre", text: text }));
            if (state.status) box.appendChild(el("p", { text: "The page shows the last report it got." }));
        }
        show(box, !!text);
    }

    function renderUpdated() {
        var at = state.statusAt ? new Date(state.statusAt).toLocaleTimeString() : "never";
        $("kv-updated").textContent = "Updated " + at + " (every " + STATUS_MS / 1000 + " s)";
    }

    function render() {
        var rep = state.status;
        renderUpdated();
        var c = rep.cluster || {};
        $("kv-summary").textContent = [
            c.quorate ? "quorate" : "NO QUORUM",
            "designated controller " + (c.designated_controller || "none"),
            c.stonith_enabled ? "fencing enabled" : "FENCING DISABLED",
            rep.hosts.length + " hosts, " + rep.guests.length + " guests"
        ].join(" · ");
        var frozen = c.frozen || c.maintenance_mode || c.maintenance;
        var fb = clear($("kv-frozen"));
        if (frozen) fb.appendChild(el("p", { class: "pf-c-alert__title",
                                              text: "Frozen: the cluster recovers and moves nothing" }));
        show(fb, !!frozen);
        renderWarnings(rep.warnings || []);
        renderDataCentres(rep);
        renderFooter();
    }

    function renderWarnings(warnings) {
        var box = clear($("kv-warnings"));
        warnings.forEach(function (w) {
            box.appendChild(el("div", { class: "pf-c-alert pf-m-warning pf-m-inline kv-warning",
                                        "data-warning": w.code },
                               el("p", { class: "pf-c-alert__title", text: "⚠ " + w.message }),
                               w.fix ? el("p", { class: "pf-c-alert__description", text: "fix: " + w.fix }) : null));
        });
    }

    function renderDataCentres(rep) {
        var groups = {};
        var order = [];
        function group(name) {
            var key = name || "";
            if (!groups[key]) {
                groups[key] = { hosts: [], stray: [] };
                order.push(key);
            }
            return groups[key];
        }
        rep.hosts.forEach(function (h) { group(h.dc).hosts.push(h) });
        var hostDc = {};
        rep.hosts.forEach(function (h) { hostDc[h.name] = h.dc || "" });
        rep.guests.forEach(function (g) {
            if (!g.host || hostDc[g.host] === undefined) group(g.dc).stray.push(g);
        });
        order.sort(function (a, b) { return a === "" ? 1 : b === "" ? -1 : a.localeCompare(b) });
        var box = clear($("kv-dcs"));
        var single = order.length === 1;
        order.forEach(function (name) {
            var g = groups[name];
            var title = name ? "Data centre " + name : single ? "Hosts" : "Hosts in no data centre";
            box.appendChild(el("section", { class: "kv-dc", "data-dc": name },
                               el("h3", { class: "pf-c-title pf-m-lg", text: title }),
                               el("div", { class: "kv-hosts" },
                                  ...g.hosts.map(function (h) { return hostCard(h, rep) }),
                                  g.stray.length ? strayCard(g.stray, rep) : null)));
        });
    }

    function hostCard(h, rep) {
        var guests = rep.guests.filter(function (g) { return g.host === h.name });
        var actions = el("div", { class: "kv-host-actions" });
        if (has("host", "evacuate") && h.state === "online")
            actions.appendChild(button("Evacuate", "evacuate", function () { confirmEvacuate(h) }));
        if (has("host", "return") && h.state === "standby")
            actions.appendChild(button("Return", "return", function () { confirmReturn(h) }));
        return el("article", { class: "pf-c-card kv-host kv-card-" + h.state, "data-host": h.name,
                               "data-state": h.state },
                  el("div", { class: "pf-c-card__title kv-host-title" },
                     el("span", { class: "kv-host-name", text: h.name }),
                     badge("host", h.state, HOST_LABELS),
                     h.designated_controller ? el("span", { class: "kv-tag", text: "controller" }) : null),
                  el("div", { class: "pf-c-card__body" },
                     guests.length ? guestTable(guests, rep)
                         : el("p", { class: "kv-none", text: "no guests" })),
                  actions.firstChild ? el("div", { class: "pf-c-card__footer" }, actions) : null);
    }

    function strayCard(guests, rep) {
        return el("article", { class: "pf-c-card kv-host kv-stray", "data-host": "" },
                  el("div", { class: "pf-c-card__title kv-host-title" },
                     el("span", { class: "kv-host-name", text: "Not running" })),
                  el("div", { class: "pf-c-card__body" }, guestTable(guests, rep)));
    }

    function guestTable(guests, rep) {
        return el("table", { class: "pf-c-table pf-m-compact pf-m-grid-md kv-guests", role: "grid" },
                  el("thead", {}, el("tr", {}, ...["guest", "state", "health", "fails", ""].map(
                      function (t) { return el("th", { text: t, scope: "col" }) }))),
                  el("tbody", {}, ...guests.map(function (g) { return guestRow(g, rep) })));
    }

    function guestRow(g, rep) {
        var shown = state.busy[g.name] || g.state;
        var actions = el("div", { class: "kv-actions" });
        if (!state.busy[g.name]) {
            if (g.state === "stopped" || g.state === "failed")
                actions.appendChild(button("Start", "start", function () { confirmGuest(g, "start") }));
            if (g.state === "running" || g.state === "failed")
                actions.appendChild(button("Stop", "stop", function () { confirmGuest(g, "stop") }));
            if (g.state === "running" && rep.hosts.length > 1)
                actions.appendChild(button("Migrate", "migrate", function () { confirmMigrate(g, rep) }));
        }
        var fails = g.fail_count || 0;
        var health = g.health || "-";
        return el("tr", { class: "kv-guest kv-guest-" + shown, "data-guest": g.name,
                          "data-host": g.host || "", "data-state": shown },
                  el("td", { "data-label": "guest", class: "kv-guest-name", text: g.name }),
                  el("td", { "data-label": "state" }, badge("guest", shown, GUEST_LABELS)),
                  el("td", { "data-label": "health", class: "kv-health kv-health-" + health.split(":")[0].replace(/\s+/g, "-"),
                             text: health }),
                  el("td", { "data-label": "fails", class: fails ? "kv-fails kv-fails-some" : "kv-fails",
                             text: fails ? "✖ " + fails : "0" }),
                  el("td", { "data-label": "actions" }, actions));
    }

    function button(label, action, onclick) {
        return el("button", { class: "pf-c-button pf-m-secondary pf-m-small kv-button", type: "button",
                              "data-action": action, text: label, onclick: onclick });
    }

    function renderFooter() {
        var f = clear($("kv-footer"));
        var missing = [];
        if (!has("host", "evacuate")) missing.push("evacuate/return a host (kvmha host)");
        if (!has("ha", "freeze")) missing.push("freeze/thaw (kvmha ha)");
        if (!has("events")) missing.push("the event history (kvmha events)");
        f.appendChild(el("p", { text: "From the kvmha CLI on this host: kvmha status --json every " +
                                      STATUS_MS / 1000 + " s." }));
        if (missing.length)
            f.appendChild(el("p", { "data-unavailable": missing.join("; "),
                                    text: "Not available with this host's kvmha: " + missing.join("; ") + "." }));
        var row = el("p", { class: "kv-cluster-actions" });
        if (has("ha", "freeze")) row.appendChild(button("Freeze the cluster", "freeze", function () { confirmHa("freeze") }));
        if (has("ha", "thaw")) row.appendChild(button("Thaw the cluster", "thaw", function () { confirmHa("thaw") }));
        if (row.firstChild) f.appendChild(row);
    }

    /* ---- events ----------------------------------------------------------------------- */
    function pollEvents() {
        if (!has("events")) {
            renderEvents();
            return;
        }
        kvmha(["events", "--json"])
                .then(function (out) {
                    var doc = parseJson(out);
                    state.events = (doc && doc.events) || [];
                    state.eventsError = null;
                })
                .catch(function (err) { state.eventsError = err.message })
                .then(function () {
                    renderEvents();
                    window.setTimeout(pollEvents, EVENTS_MS);
                });
    }

    function renderEvents() {
        var list = clear($("kv-events"));
        var all = state.events.concat(state.observed);
        all.sort(function (a, b) { return b.epoch - a.epoch });
        if (state.eventsError)
            list.appendChild(el("li", { class: "kv-event kv-event-error", text: "kvmha events failed: " + state.eventsError }));
        if (!has("events") && state.caps)
            list.appendChild(el("li", { class: "kv-event", "data-event-kind": "note",
                                        text: "This host's kvmha has no 'kvmha events' command: only changes seen while this page is open are shown." }));
        if (!all.length && !state.eventsError)
            list.appendChild(el("li", { class: "kv-event kv-none", text: "No recent events." }));
        all.slice(0, 40).forEach(function (e) {
            var t = new Date(e.epoch * 1000);
            list.appendChild(el("li", { class: "kv-event kv-event-" + e.kind, "data-event-kind": e.kind,
                                        "data-source": e.source },
                                el("time", { datetime: t.toISOString(), text: t.toLocaleTimeString() }),
                                el("span", { class: "kv-event-kind", text: kindLabel(e) }),
                                el("span", { class: "kv-event-text", text: e.message })));
        });
    }

    function kindLabel(e) {
        if (e.source === "console") return "seen here";
        return { fence: "fenced", "fence-failed": "fence failed", failure: "failure", start: "started",
                 stop: "stopped", migrate: "migrated", "migrate-out": "migrating",
                 "fence-request": "fence request", pending: "in progress" }[e.kind] || e.kind;
    }

    /* ---- plan ------------------------------------------------------------------------- */
    function pollPlan() {
        var box = $("kv-plan");
        if (!has("plan")) {
            box.setAttribute("data-plan", "unavailable");
            clear(box).appendChild(el("p", { class: "kv-none",
                                             text: "Not available: this host's kvmha has no 'kvmha plan' command." }));
            return;
        }
        kvmha(["plan", "--json"])
                .then(function (out) { renderPlan(parseJson(out)) }, function (err) {
                    box.setAttribute("data-plan", "error");
                    clear(box).appendChild(el("p", { class: "kv-pre kv-error-text", text: err.message }));
                })
                .then(function () { window.setTimeout(pollPlan, PLAN_MS) });
    }

    function renderPlan(doc) {
        var box = clear($("kv-plan"));
        var scenarios = (doc && doc.scenarios) || [];
        box.setAttribute("data-plan", "ok");
        if (!scenarios.length) {
            box.appendChild(el("p", { class: "kv-none", text: "kvmha plan reported no scenarios." }));
            return;
        }
        box.appendChild(el("div", { class: "kv-plan" }, ...scenarios.map(function (s) {
            var fail = (s.fail || []).join(" and ");
            var rows = (s.guests || []).map(function (g) {
                var where = g.to ? (g.from ? g.from + " → " : "") + g.to : "stays down";
                return el("li", { "data-guest": g.name, "data-to": g.to || "" },
                          el("strong", { text: g.name }), ": " + where +
                          (g.order ? " (" + ordinal(g.order) + ")" : "") + (g.reason ? " — " + g.reason : ""));
            });
            return el("article", { class: "pf-c-card kv-scenario", "data-fail": fail, "data-ok": String(!!s.ok) },
                      el("div", { class: "pf-c-card__title" }, "If " + fail + " fails ",
                         badge("plan", s.ok ? "ok" : "down", { ok: "every guest runs", down: "guests stay down" })),
                      el("div", { class: "pf-c-card__body" },
                         s.summary ? el("p", { text: s.summary }) : null,
                         rows.length ? el("ul", { class: "kv-plan-guests" }, ...rows)
                             : el("p", { class: "kv-none", text: "no guest moves" })));
        })));
    }

    function ordinal(n) {
        return n + ({ 1: "st", 2: "nd", 3: "rd" }[n % 10 > 3 || Math.floor(n / 10) % 10 === 1 ? 0 : n % 10] || "th");
    }

    /* ---- actions: confirm, run, show the CLI's answer ---------------------------------- */
    var dialog = { running: false };

    function openDialog(title, body, confirmLabel, run) {
        $("kv-dialog-title").textContent = title;
        clear($("kv-dialog-body")).appendChild(body);
        var result = clear($("kv-dialog-result"));
        result.removeAttribute("data-result");
        show(result, false);
        resetProgress();
        var ok = $("kv-dialog-ok");
        ok.textContent = confirmLabel;
        ok.disabled = false;
        show(ok, true);
        $("kv-dialog-cancel").textContent = "Cancel";
        $("kv-dialog-cancel").disabled = false;
        dialog.run = run;
        show($("kv-dialog"), true);
        ok.focus();
    }

    function closeDialog() {
        if (dialog.running) return;
        show($("kv-dialog"), false);
        dialog.run = null;
    }

    function confirmed() {
        if (!dialog.run || dialog.running) return;
        dialog.running = true;
        $("kv-dialog-ok").disabled = true;
        $("kv-dialog-cancel").disabled = true;
        var run = dialog.run;
        dialog.run = null;
        run()
                .then(function (out) { finish("ok", summaryOf(out) || "done") },
                      function (err) { finish("error", err.message) });
    }

    function finish(outcome, text) {
        dialog.running = false;
        var fill = $("kv-progress-fill");
        if (outcome !== "ok" && fill.classList.contains("kv-indeterminate")) resetProgress();
        if (state.status) render(); // the guest is no longer "migrating" on this page's behalf
        var result = clear($("kv-dialog-result"));
        result.setAttribute("data-result", outcome);
        result.className = "pf-c-modal-box__body pf-c-alert pf-m-inline " +
            (outcome === "ok" ? "pf-m-success" : "pf-m-danger");
        result.appendChild(el("p", { class: outcome === "ok" ? "pf-c-alert__title" : "pf-c-alert__title kv-pre",
                                     text: (outcome === "ok" ? "✔ " : "✖ ") + text }));
        show(result, true);
        show($("kv-dialog-ok"), false);
        $("kv-dialog-cancel").textContent = "Close";
        $("kv-dialog-cancel").disabled = false;
    }

    /* The CLI's own words for what it did: a JSON document's message, or its last line. */
    var RESULTS = {
        "guest-start": function (d) { return d.guest + " started" + (d.host ? " on " + d.host : "") },
        "guest-stop": function (d) { return d.guest + " stopped" },
        "guest-migrate": function (d) {
            return d.guest + " migrated to " + d.host + (d.seconds !== undefined ? " in " + d.seconds + " s" : "");
        }
    };

    function summaryOf(out) {
        var doc = parseJson(out);
        if (doc && typeof doc === "object" && !Array.isArray(doc)) {
            if (RESULTS[doc.action]) return RESULTS[doc.action](doc);
            if (doc.message) return doc.message;
            if (doc.summary) return doc.summary;
            return Object.keys(doc).filter(function (k) { return k !== "schema" && typeof doc[k] !== "object" })
                    .map(function (k) { return k + ": " + doc[k] }).join(", ");
        }
        var lines = (out || "").trim().split("\n");
        return lines[lines.length - 1];
    }

    function para(text) {
        return el("p", { text: text });
    }

    function confirmGuest(g, verb) {
        var what = verb === "start"
            ? "The cluster starts " + g.name + " on a host it chooses."
            : "The cluster stops " + g.name + " and keeps it stopped until it is started again.";
        openDialog(verb === "start" ? "Start " + g.name + "?" : "Stop " + g.name + "?", para(what),
                   verb === "start" ? "Start" : "Stop", function () {
                       return actionArgv(["guest", verb, g.name]).then(function (argv) { return kvmha(argv, null, true) })
                               .then(done, fail);
                   });
    }

    function confirmMigrate(g, rep) {
        var select = el("select", { class: "pf-c-form-control", id: "kv-migrate-target", "aria-label": "target host" });
        rep.hosts.filter(function (h) { return h.name !== g.host }).forEach(function (h) {
            select.appendChild(el("option", { value: h.name, text: h.name + " (" + h.state + ")" }));
        });
        var body = el("div", {}, para("Live-migrate " + g.name + " from " + g.host + " to:"), select,
                      para("The guest keeps running; the cluster moves it and kvmha clears the move constraint afterwards."));
        openDialog("Migrate " + g.name + "?", body, "Migrate", function () {
            var target = select.value;
            state.busy[g.name] = "migrating";
            if (state.status) render();
            progress(null, "asking the cluster to move " + g.name + " to " + target);
            return actionArgv(["guest", "migrate", g.name, target])
                    .then(function (argv) { return kvmha(argv, function (_chunk, all) { progressFrom(all) }, true) })
                    .then(done, fail)
                    .then(function (out) {
                        delete state.busy[g.name];
                        return out;
                    }, function (err) {
                        delete state.busy[g.name];
                        throw err;
                    });
        });
    }

    /* Progress as the CLI prints it: "NN% text" lines, or JSON lines with a percent. */
    function progressFrom(all) {
        var lines = all.split(/\r|\n/);
        for (var i = lines.length - 1; i >= 0; i--) {
            var m = /^\s*(\d{1,3}(?:\.\d+)?)%\s+(.*)$/.exec(lines[i]);
            if (m) return progress(parseFloat(m[1]), m[2]);
            var j = /"(?:percent|progress)"\s*:\s*(\d{1,3}(?:\.\d+)?)/.exec(lines[i]);
            if (j) {
                var t = /"(?:text|message)"\s*:\s*"([^"]*)"/.exec(lines[i]);
                return progress(parseFloat(j[1]), t ? t[1] : "");
            }
        }
    }

    function resetProgress() {
        var box = $("kv-progress");
        show(box, false);
        box.setAttribute("data-progress", "");
        box.removeAttribute("data-updates");
        $("kv-progress-fill").style.width = "";
        $("kv-progress-fill").classList.remove("kv-indeterminate");
        $("kv-progress-text").textContent = "";
    }

    function progress(pct, text) {
        var box = $("kv-progress");
        show(box, true);
        var fill = $("kv-progress-fill");
        if (pct === null) {
            fill.style.width = "";
            fill.classList.add("kv-indeterminate");
            box.setAttribute("data-progress", "");
        } else {
            fill.classList.remove("kv-indeterminate");
            fill.style.width = Math.max(0, Math.min(100, pct)) + "%";
            box.setAttribute("data-progress", String(pct));
            var seen = parseInt(box.getAttribute("data-updates") || "0", 10) + 1;
            box.setAttribute("data-updates", String(seen));
        }
        $("kv-progress-text").textContent = (pct === null ? "" : Math.round(pct) + "% ") + text;
    }

    function confirmEvacuate(h) {
        openDialog("Evacuate " + h.name + "?", para("Every guest on " + h.name + " is live-migrated to other " +
                   "hosts, then " + h.name + " is put in standby."), "Evacuate", function () {
            progress(null, "evacuating " + h.name);
            return actionArgv(["host", "evacuate", h.name])
                    .then(function (argv) { return kvmha(argv, function (_c, all) { progressFrom(all) }, true) })
                    .then(done, fail);
        });
    }

    function confirmReturn(h) {
        openDialog("Return " + h.name + "?", para(h.name + " leaves standby and runs guests again."), "Return",
                   function () {
                       return actionArgv(["host", "return", h.name]).then(function (argv) { return kvmha(argv, null, true) })
                               .then(done, fail);
                   });
    }

    function confirmHa(verb) {
        var text = verb === "freeze"
            ? "While frozen, the cluster recovers and moves nothing: a failed guest or host is not recovered."
            : "The cluster recovers and moves guests again.";
        openDialog(verb === "freeze" ? "Freeze the cluster?" : "Thaw the cluster?", para(text),
                   verb === "freeze" ? "Freeze" : "Thaw", function () {
                       return actionArgv(["ha", verb]).then(function (argv) { return kvmha(argv, null, true) }).then(done, fail);
                   });
    }

    function done(out) {
        window.setTimeout(pollNow, 0);
        return out;
    }

    function fail(err) {
        window.setTimeout(pollNow, 0);
        throw err;
    }

    function pollNow() {
        kvmha(["status", "--json"]).then(function (out) {
            var rep = parseJson(out);
            if (rep && rep.hosts) {
                observe(state.status, rep);
                state.status = rep;
                state.statusAt = Date.now();
                render();
            }
        }, function () {});
    }

    /* ---- start ------------------------------------------------------------------------ */
    function legend() {
        var box = $("kv-legend");
        ["online", "standby", "offline", "fenced"].forEach(function (s) { box.appendChild(badge("host", s, HOST_LABELS)) });
        box.appendChild(el("span", { class: "kv-legend-gap" }));
        ["running", "migrating", "stopped", "failed"].forEach(function (s) { box.appendChild(badge("guest", s, GUEST_LABELS)) });
    }

    function start() {
        $("kv-dialog-ok").addEventListener("click", confirmed);
        $("kv-dialog-cancel").addEventListener("click", closeDialog);
        document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeDialog() });
        legend();
        pollStatus();
        discover().then(function () {
            if (state.status) render();
            pollEvents();
            pollPlan();
        });
    }

    document.addEventListener("DOMContentLoaded", start);
}());

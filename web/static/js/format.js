// Times in the site's time zone on a 24-hour clock, whatever the screen's own
// zone is; numbers and temperatures the way each language writes them.

export function makeFormat(lang, timeZone) {
  const locale = lang === "en" ? "en-GB" : "zh-CN";
  const make = (options) => new Intl.DateTimeFormat(locale, { timeZone, hourCycle: "h23", ...options });
  const time = make({ hour: "2-digit", minute: "2-digit" });
  const seconds = make({ hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const date = make({ year: "numeric", month: "2-digit", day: "2-digit" });
  const dateTime = make({ month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
  const weekday = make({ weekday: "short", month: "2-digit", day: "2-digit" });
  const dayKey = new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" });
  const number = new Intl.NumberFormat(locale);
  const decimal = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const at = (value) => (value instanceof Date ? value : new Date(value));
  const ok = (value) => value !== null && value !== undefined && !Number.isNaN(at(value).getTime());
  return {
    lang,
    timeZone,
    /** "14:05" */
    time: (value) => (ok(value) ? time.format(at(value)) : "–"),
    /** "14:05:09" */
    timeSeconds: (value) => (ok(value) ? seconds.format(at(value)) : "–"),
    /** "2026/11/24" */
    date: (value) => (ok(value) ? date.format(at(value)) : "–"),
    /** "11/24 14:05" */
    dateTime: (value) => (ok(value) ? dateTime.format(at(value)) : "–"),
    /** "11/24 周二" */
    weekday: (value) => (ok(value) ? weekday.format(at(value)) : "–"),
    /** "2026-11-24": the site's local date of a moment (for ?date= and ?from=) */
    dayKey: (value) => dayKey.format(at(value)),
    number: (value) => (value === null || value === undefined ? "–" : number.format(value)),
    decimal: (value) => (value === null || value === undefined ? "–" : decimal.format(value)),
  };
}

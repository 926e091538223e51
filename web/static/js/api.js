// Calls to the controller's API from the page: the session cookie goes along by
// itself; every change also carries the session's CSRF token.

export class ApiFailure extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status; // 0: the controller could not be reached
    this.code = code;
    this.details = details;
  }
}

export function makeApi(session, onSessionEnded) {
  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      if (session.csrf) headers["X-CSRF-Token"] = session.csrf;
      if (body !== undefined) headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiFailure(0, "network", String(error && error.message ? error.message : error));
    }
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const error = (parsed && parsed.error) || {};
      const failure = new ApiFailure(
        response.status,
        error.code || `http_${response.status}`,
        error.message || response.statusText,
        error.details,
      );
      if (response.status === 401) onSessionEnded(failure);
      throw failure;
    }
    return parsed;
  }
  return {
    get: (path) => call("GET", path),
    send: (method, path, body) => call(method, path, body),
  };
}

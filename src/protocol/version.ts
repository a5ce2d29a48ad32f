/** Wire protocol version carried by the first message of every connection. */
export const PROTOCOL_VERSION = 1;

/** The tether release; also reported by agents to the relay. */
export const VERSION = "0.1.0";

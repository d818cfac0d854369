// Extension points for features that land with their own issues: search (a box in the
// header), integrations (slash-command completion in the composer, buttons under a
// message, link previews). Each is a list of components the client renders where the
// feature belongs; an empty list renders nothing.
import type { ComponentType } from "preact";
import type { Channel, Message } from "./types";

export interface HeaderSlotProps { channel: Channel | null }
export interface ComposerSlotProps { channel: Channel; text: string; setText: (t: string) => void }
export interface MessageSlotProps { message: Message }

export const slots = {
  /** The header's search box. */
  headerSearch: [] as ComponentType<HeaderSlotProps>[],
  /** Completion for "/command" in the composer (shown while the text starts with "/"). */
  slashCommands: [] as ComponentType<ComposerSlotProps>[],
  /** Buttons an integration attaches to a message. */
  messageButtons: [] as ComponentType<MessageSlotProps>[],
  /** Previews of the links in a message. */
  linkPreviews: [] as ComponentType<MessageSlotProps>[],
};

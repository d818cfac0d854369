// Wire types of the /v1 API (gateway/chat/schema.py and gateway/chat/accounts.py).

export interface Snippet { lang: string; requested: string; code: string; html: string }

export interface Message {
  id: number;
  channel_id: string;
  author_id: string;
  text: string;
  rendered: Snippet[];
  version: number;
  deleted: boolean;
  created_at: number;
  edited_at?: number | null;
  client_msg_id?: string | null;
  thread_parent?: number | null;
  also_to_channel?: boolean;
  reply_count?: number;
  reply_users?: string[];
  last_reply_at?: number | null;
  reactions?: Record<string, string[]>;
}

export interface Channel {
  id: string;
  kind: "public" | "private" | "dm" | "group_dm";
  name: string;
  topic: string;
  archived: boolean;
  created_by: string;
  created_at: number;
  member: boolean;
  member_role?: string | null;
  muted: boolean;
  members?: string[] | null;
  subscription: string;
}

export interface Status {
  online: boolean; away: boolean; dnd: boolean; dnd_until: number | null;
  text: string; emoji: string; until: number | null;
}

export interface User {
  id: string; display_name: string; title: string; manager: string; role: string;
  status: Status; email?: string | null;
}

export interface UnreadCount {
  channel_id: string; unread: number; mentions: number; last_read_id: number; more?: boolean;
}

export interface Position { offset: number; epoch: string }

export interface MessagePage { messages: Message[]; has_more: boolean; position?: Position | null }

export interface Member { user_id: string; role: string; display_name: string }

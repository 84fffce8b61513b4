{#- Exposure log, typed; rows with a NULL key are dropped (dq_data_issues counts them). -#}
with

source as (

    select * from {{ source('raw', 'assignments') }}

),

renamed as (

    select {{ typed_raw_columns(source('raw', 'assignments'), 'assignments') }}
    from source

),

{#- A row missing any key cannot be attributed: dropped here, counted in dq_data_issues. -#}
complete as (

    select * from renamed
    where experiment_id is not null
      and user_id is not null
      and variant is not null
      and assigned_at is not null

)

select * from complete
